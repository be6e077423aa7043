"""kill -9 of a 2-rank run (the deepspeed launcher and both ranks), once in the middle of a phase and once in
the middle of a checkpoint save; the same command run again resumes from the last complete checkpoint, and its
loss at every step equals the uninterrupted run's bit for bit (fp32 on the CPU, dropout on: RNG restored)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, free_port, read_scalars, short_run
from integration.cli import env

pytestmark = [pytest.mark.integration, pytest.mark.multiproc, pytest.mark.slow]

STEPS = 10
EVERY = 3
"""Checkpoints at steps 3, 6, 9 and 10; an epoch is 6 steps (43 texts, global batch 8), so the phase crosses one."""


def command(module: str, model: Path, data: Path, run_dir: Path) -> list[str]:
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    return [
        deepspeed,
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--module",
        module,
        "train",
        "--config",
        "configs/quickstart.yaml",
        "--phase",
        "dae",
        *short_run(model, data, run_dir),
        "deepspeed.zero_stage=2",
        "dae.epochs=2",
        f"dae.max_steps={STEPS}",
        "dae.micro_batch_size_per_rank=4",
        "dae.log_every_steps=1",
        f"checkpoint.every_steps={EVERY}",
        "checkpoint.keep_last=2",
        "checkpoint.keep_finished=true",  # the test reads the finished phase's checkpoints
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def kill_when(cmd: list[str], ready: Path, log: Path, extra_env: dict | None = None) -> str:
    """Start cmd in its own process group, SIGKILL the whole group as soon as `ready` exists; returns its output."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env(), **(extra_env or {})},
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        try:
            while not ready.exists():
                assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {ready} appeared"
                assert time.monotonic() < deadline, f"{ready} did not appear"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return log.read_text()


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return read_scalars(run_dir / "tb" / "dae", "dae/loss")


def test_killed_runs_resume_bit_for_bit(tiny_model, small_data, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run(command("dcl_dist.cli", tiny_model, small_data, uninterrupted))
    reference = losses(uninterrupted)
    assert [s for s, _ in reference] == list(range(1, STEPS + 1))

    run_dir = tmp_path / "run"
    checkpoints = run_dir / "dae" / "checkpoints"
    cmd = command("dcl_dist.cli", tiny_model, small_data, run_dir)
    resumed_from_3 = f"resuming from {checkpoints / f'step_{3:08d}'}"

    # 1. kill -9 in the middle of the phase, once its first checkpoint is complete
    kill_when(cmd, checkpoints / f"step_{3:08d}", tmp_path / "first.log")
    assert not (run_dir / "dae" / "artifact").exists()

    # 2. run again; kill -9 in the middle of the next save: shards and complete.json written, not yet renamed
    marker = tmp_path / "stalled"
    stall = {"DCL_STALL_AT_STEP": "6", "DCL_FAULT_MARKER": str(marker)}
    stall["PYTHONPATH"] = f"{REPO / 'tests'}{os.pathsep}{env()['PYTHONPATH']}"
    second = kill_when(
        command("integration.faults", tiny_model, small_data, run_dir), marker, tmp_path / "second.log", stall
    )
    assert resumed_from_3 in second
    assert (checkpoints / f".partial-step_{6:08d}" / "complete.json").is_file()
    assert not (checkpoints / f"step_{6:08d}").exists()

    # 3. run again: back to step 3, the half-saved step 6 ignored; every step's loss as if nothing had happened
    third = run(cmd)
    assert resumed_from_3 in third.stderr
    assert losses(run_dir) == reference
    kept = sorted(p.name for p in checkpoints.iterdir() if p.is_dir())
    assert kept == [f"step_{9:08d}", f"step_{STEPS:08d}"]  # keep_last 2, the partial cleaned up
    assert (run_dir / "dae" / "artifact" / "dcl_dist.json").is_file()
