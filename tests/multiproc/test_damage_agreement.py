"""Every rank takes the same decision on a damaged checkpoint and on a busy run directory: a rank file that only
rank 1 reads is missing, and both ranks set the checkpoint aside and resume from the one before; a run directory
held by another run stops both ranks, each with the message naming the holder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dcl_dist import run_lock
from dcl_dist.rundir import RunDir
from multiproc.spawn import run_ranks

pytestmark = pytest.mark.multiproc


def write_checkpoint(folder: Path, step: int) -> None:
    """A checkpoint of 2 ranks as checkpoints.save records it (the files each rank reads, with their sizes)."""
    folder.mkdir(parents=True)
    torch.save({"weights": torch.zeros(3)}, folder / "mp_rank_00_model_states.pt")
    for rank in (0, 1):
        torch.save({"rank": rank, "position": step}, folder / f"rank{rank}.pt")
    size = {name: (folder / name).stat().st_size for name in ("mp_rank_00_model_states.pt", "rank0.pt", "rank1.pt")}
    files = {"0": {k: size[k] for k in ("mp_rank_00_model_states.pt", "rank0.pt")}, "1": {"rank1.pt": size["rank1.pt"]}}
    record = {"step": step, "epoch": 0, "step_in_epoch": step, "finished": False, "history": [], "world_size": 2}
    (folder / "complete.json").write_text(json.dumps({**record, "files": files}))


def _find(run_dir: str) -> tuple[str, list[str]]:
    from dcl_dist import resume

    phase_dir = RunDir(run_dir).phase("ft")
    found = resume.find(phase_dir, world_size=2)
    return found.checkpoint.name, sorted(p.name for p in phase_dir.checkpoints.iterdir())


def test_a_rank_file_only_rank_1_reads_is_missing_and_both_ranks_fall_back_together(tmp_path):
    checkpoints = RunDir(tmp_path / "run").phase("ft").checkpoints
    write_checkpoint(checkpoints / "step_00000002", 2)
    write_checkpoint(checkpoints / "step_00000004", 4)
    (checkpoints / "step_00000004" / "rank1.pt").unlink()
    results = run_ranks(_find, 2, tmp_path, str(tmp_path / "run"))
    assert results == [("step_00000002", ["damaged-step_00000004", "step_00000002"])] * 2


def _hold(run_dir: str) -> str:
    try:
        with run_lock.hold(RunDir(run_dir)):
            return "held"
    except run_lock.RunDirInUse as e:
        return str(e)


def test_a_busy_run_directory_stops_every_rank_naming_the_holder(tmp_path):
    import os

    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    with run_lock.hold(run_dir):  # this process holds it, as a first run would
        results = run_ranks(_hold, 2, tmp_path, str(run_dir.root))
    assert results[0] == results[1] and "is in use by another dcl-dist run (host " in results[0]
    assert f"pid {os.getpid()}" in results[0]
