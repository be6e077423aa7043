import json

import pytest

from dcl_dist import dist
from dcl_dist.config import load_config
from dcl_dist.data.batch_plan import accumulation_steps
from dcl_dist.errors import ConfigError
from dcl_dist.pipeline import keep_saved_global_batch


def checkpointed(tmp_path, global_batch: int):
    """A dae phase folder whose latest checkpoint was written with this global batch (2 ranks x 8)."""
    step = tmp_path / "dae" / "checkpoints" / "step_00000004"
    step.mkdir(parents=True)
    (step / "complete.json").write_text(json.dumps({"step": 4, "world_size": 2, "global_batch_size": global_batch}))
    return tmp_path / "dae"


def config(*overrides):
    return load_config(None, ["data.train=any/hub_dataset", "dae.micro_batch_size_per_rank=8", *overrides])


def test_another_world_size_keeps_the_checkpoints_global_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 1)  # other tests may have a process group
    cfg = config()
    kept = keep_saved_global_batch(cfg, "dae", checkpointed(tmp_path, 16))
    assert kept.dae.global_batch_size == 16 and accumulation_steps(kept, "dae", 1) == 2
    assert cfg.dae.global_batch_size is None  # the caller's config is left alone


def test_a_world_size_that_cannot_make_it_names_those_that_can(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 3)  # other tests may have a process group
    with pytest.raises(
        ConfigError,
        match="global batch of 16 examples, and 3 ranks x dae.micro_batch_size_per_rank 8"
        " cannot make it: resume on 1 or 2 ranks",
    ):
        keep_saved_global_batch(config(), "dae", checkpointed(tmp_path, 16))


def test_the_same_batch_or_an_explicit_one_is_left_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 2)  # other tests may have a process group
    phase_dir = checkpointed(tmp_path, 16)
    cfg = config()
    assert keep_saved_global_batch(cfg, "dae", phase_dir) is cfg
    explicit = config("dae.global_batch_size=32")
    assert keep_saved_global_batch(explicit, "dae", phase_dir) is explicit
