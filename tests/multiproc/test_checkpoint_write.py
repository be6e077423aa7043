"""A checkpoint write that fails on one rank only (a full local disk, a lost permission) stops every rank with
one message, removes the partial checkpoint and leaves the previous one as the one to resume from."""

from __future__ import annotations

import pytest

from multiproc.spawn import run_ranks

pytestmark = pytest.mark.multiproc


def _save_with_rank_1_out_of_space(tmp: str) -> tuple[str, list[str]]:
    import errno
    import os
    from pathlib import Path

    import torch

    from dcl_dist import checkpoints, dist, engine
    from dcl_dist.config import load_config
    from dcl_dist.errors import CheckpointWriteError

    cfg = load_config(None, [f"run.dir={tmp}", f"data.train={__file__}", "ft.micro_batch_size_per_rank=2"])
    model_engine = engine.initialize(torch.nn.Linear(4, 2), cfg, "ft", total_steps=4, hidden_size=4)
    root = Path(tmp) / "checkpoints"
    checkpoints.save(model_engine, root, 1, {"step": 1}, {}, keep_last=3)
    if dist.rank() == 1:

        def full(obj, f, *args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

        torch.save = full
    try:
        checkpoints.save(model_engine, root, 2, {"step": 2}, {}, keep_last=3)
    except CheckpointWriteError as e:
        message = str(e)
    else:
        message = "saved"
    dist.barrier()
    return message, sorted(p.name for p in root.iterdir() if p.is_dir())


def test_a_write_that_fails_on_one_rank_stops_every_rank(tmp_path):
    rank0, rank1 = run_ranks(_save_with_rank_1_out_of_space, 2, tmp_path, str(tmp_path))
    root = tmp_path / "checkpoints"
    for message, _ in (rank0, rank1):
        assert message.startswith(f"checkpoint step 2 could not be written to {root}: ")
        assert f"the previous checkpoint {root / 'step_00000001'} is intact" in message
    assert "another rank could not write its part" in rank0[0]
    assert "No space left on device" in rank1[0]
    assert rank0[1] == rank1[1] == ["step_00000001"]  # the partial step 2 is gone
    assert (root / "latest").read_text() == "step_00000001"
