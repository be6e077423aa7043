"""Ctrl-C on a plain `dcl-dist train`: the step finishes, a checkpoint is written, the command exits with 75
and says how to go on; the same command then resumes from that checkpoint. A DataLoader worker is running, and
receives the Ctrl-C too, as in a terminal; it ignores stop signals, which must not keep a crashed run alive."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcl_dist.errors import Interrupted
from helpers import REPO, read_scalars, short_run
from integration.cli import dcl_dist, env

pytestmark = pytest.mark.integration

STEPS = 12


def arguments(model: Path, data: Path, run_dir: Path) -> list[str]:
    return [
        "train",
        "--config",
        "configs/quickstart.yaml",
        "--phase",
        "dae",
        *short_run(model, data, run_dir),
        "dae.epochs=3",
        f"dae.max_steps={STEPS}",
        "dae.micro_batch_size_per_rank=8",
        "dae.log_every_steps=1",
        "checkpoint.every_steps=2",
        "data.num_workers=1",
    ]


@pytest.mark.slow
def test_ctrl_c_ends_in_a_checkpoint_that_the_next_run_resumes(tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    args = arguments(tiny_model, small_data, run_dir)
    checkpoints = run_dir / "dae" / "checkpoints"
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dcl_dist.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env(),
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not (checkpoints / f"step_{2:08d}").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground process group
        assert proc.wait(timeout=300) == Interrupted.exit_code, log.read_text()[-3000:]
    first = log.read_text()
    stopped = re.search(r"dcl-dist: stopped on SIGINT at dae step (\d+) of 12, checkpoint (\S+): run the same", first)
    assert stopped, first[-3000:]
    step = int(stopped.group(1))
    assert 2 <= step < STEPS and stopped.group(2) == str(checkpoints / f"step_{step:08d}")
    assert json.loads((checkpoints / f"step_{step:08d}" / "complete.json").read_text())["finished"] is False
    assert "Traceback" not in first and not (run_dir / "dae" / "artifact").exists()

    again = dcl_dist(*args)
    assert f"resuming from {checkpoints / f'step_{step:08d}'}" in again.stderr
    assert [s for s, _ in read_scalars(run_dir / "tb" / "dae", "dae/loss")] == list(range(1, STEPS + 1))
    assert (run_dir / "dae" / "artifact" / "dcl_dist.json").is_file()


def test_a_crash_with_a_dataloader_worker_alive_still_exits(tiny_model, small_data, tmp_path):
    fault = {"DCL_RAISE_AT_MICRO_BATCH": "3", "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{env()['PYTHONPATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "integration.faults", *arguments(tiny_model, small_data, tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**env(), **fault},
        cwd=REPO,
        timeout=300,  # measured: without the loop's cleanup the interpreter's exit waits on the worker for ever
    )
    assert proc.returncode == 1 and "RuntimeError: injected fault" in proc.stderr


@pytest.mark.slow
def test_a_disk_that_fills_during_a_save_keeps_the_previous_checkpoint(tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    args = arguments(tiny_model, small_data, run_dir)
    checkpoints = run_dir / "dae" / "checkpoints"
    fault = {"DCL_DISK_FULL_AT_STEP": "4", "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{env()['PYTHONPATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "integration.faults", *args],
        capture_output=True,
        text=True,
        env={**env(), **fault},
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (
        f"dcl-dist: training stopped: checkpoint step 4 could not be written to {checkpoints}: No space left on"
        f" device ({checkpoints / '.partial-step_00000004'}" in proc.stderr
    ), proc.stderr[-3000:]
    assert f"the previous checkpoint {checkpoints / 'step_00000002'} is intact" in proc.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002"]  # nothing partial

    again = dcl_dist(*args)  # space freed: the same command resumes
    assert f"resuming from {checkpoints / 'step_00000002'}" in again.stderr
    assert [s for s, _ in read_scalars(run_dir / "tb" / "dae", "dae/loss")] == list(range(1, STEPS + 1))
