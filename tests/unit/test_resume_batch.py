import json

import pytest
import torch

from dcl_dist.config import load_config
from dcl_dist.data.batch_plan import accumulation_steps
from dcl_dist.errors import ConfigError
from dcl_dist.resume import find, keep_global_batch
from dcl_dist.rundir import RunDir


def checkpointed(tmp_path, global_batch: int):
    """A dae phase folder whose latest checkpoint was written with this global batch (2 ranks x 8)."""
    phase_dir = RunDir(tmp_path).phase("dae")
    step = phase_dir.checkpoints / "step_00000004"
    step.mkdir(parents=True)
    loop_state = {"step": 4, "epoch": 0, "step_in_epoch": 4, "finished": False, "history": []}
    layout = {"world_size": 2, "global_batch_size": global_batch, "files": {}}
    (step / "complete.json").write_text(json.dumps({**loop_state, **layout}))
    torch.save({"rng": {}}, step / "rank0.pt")  # what rank 0 restores on the world size that wrote it
    return phase_dir


def config(*overrides):
    return load_config(None, ["data.train=any/hub_dataset", "dae.micro_batch_size_per_rank=8", *overrides])


def test_another_world_size_keeps_the_checkpoints_global_batch(tmp_path):
    cfg = config()
    resume = find(checkpointed(tmp_path, 16), world_size=1)
    assert not resume.exact  # written on 2 ranks: RNG streams and data position are not restored
    kept = keep_global_batch(cfg, "dae", resume)
    assert kept.dae.global_batch_size == 16 and accumulation_steps(kept, "dae", 1) == 2
    assert cfg.dae.global_batch_size is None  # the caller's config is left alone


def test_a_world_size_that_cannot_make_it_names_those_that_can(tmp_path):
    with pytest.raises(
        ConfigError,
        match="global batch of 16 examples, and 3 ranks x dae.micro_batch_size_per_rank 8"
        " cannot make it: resume on 1 or 2 ranks",
    ):
        keep_global_batch(config(), "dae", find(checkpointed(tmp_path, 16), world_size=3))


def test_the_same_batch_or_an_explicit_one_is_left_as_it_is(tmp_path):
    resume = find(checkpointed(tmp_path, 16), world_size=2)
    assert resume.exact and resume.checkpoint.name == "step_00000004"
    cfg = config()
    assert keep_global_batch(cfg, "dae", resume) is cfg
    explicit = config("dae.global_batch_size=32")
    assert keep_global_batch(explicit, "dae", resume) is explicit


def test_a_phase_without_a_checkpoint_starts_afresh(tmp_path):
    cfg = config()
    assert find(RunDir(tmp_path).phase("dae"), world_size=2) is None
    assert keep_global_batch(cfg, "dae", None) is cfg
