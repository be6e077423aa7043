"""A stop request that reaches one rank only (SIGUSR1 to rank 1) stops both ranks after the same step, each with
errors.Interrupted, behind one complete checkpoint of that step."""

from __future__ import annotations

import json

import pytest

from helpers import tiny_run
from multiproc.spawn import run_ranks

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

SIGNALLED_AT_STEP = 3


def _train_until_signalled(model_dir: str, train: str, run_dir: str) -> str:
    import os
    import signal

    from dcl_dist import dist, errors, interrupt
    from dcl_dist.config import load_config
    from dcl_dist.data import batching
    from dcl_dist.pipeline import run_variant

    collated = 0
    collate = batching.DaeCollate.__call__

    def signalling(self, items):
        nonlocal collated
        collated += 1  # one micro-batch per step here
        if dist.rank() == 1 and collated == SIGNALLED_AT_STEP:
            os.kill(os.getpid(), signal.SIGUSR1)
        return collate(self, items)

    batching.DaeCollate.__call__ = signalling
    overrides = tiny_run(model_dir, train, run_dir, "dae.max_steps=20", "dae.micro_batch_size_per_rank=4")
    cfg = load_config(None, [*overrides, "checkpoint.every_steps=100"])
    with interrupt.stop_on_signals():
        try:
            run_variant(cfg, only_phase="dae")
        except errors.Interrupted as e:
            return str(e)
    return "finished"


def test_one_signalled_rank_stops_all_at_the_same_step(tmp_path, tiny_model, snips_small):
    run_dir = tmp_path / "run"
    messages = run_ranks(_train_until_signalled, 2, tmp_path, str(tiny_model), str(snips_small), str(run_dir))
    checkpoint = run_dir / "dae" / "checkpoints" / f"step_{SIGNALLED_AT_STEP:08d}"
    assert messages[1].startswith(f"stopped on SIGUSR1 at dae step {SIGNALLED_AT_STEP} of 20, checkpoint {checkpoint}")
    assert messages[0].startswith("stopped on a stop request that another rank received at dae step 3 of 20")
    saved = json.loads((checkpoint / "complete.json").read_text())
    assert (saved["step"], saved["finished"], saved["world_size"]) == (SIGNALLED_AT_STEP, False, 2)
    assert [p.name for p in checkpoint.parent.iterdir() if p.is_dir()] == [checkpoint.name]
    assert not (run_dir / "dae" / "artifact").exists()
