"""The deepspeed launcher and torchrun start dcl-dist on 2 CPU ranks; the artifacts load back and predict."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers import REPO, free_port, short_run
from integration.cli import dcl_dist, env

pytestmark = [pytest.mark.integration, pytest.mark.multiproc]


def launch(launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    """Each warning of the ranks at most once; none of the ones nobody can act on; no library prints.

    Measured before (dcl-dist's first two-rank runs): 28 FutureWarnings of DeepSpeed's torch.distributed calls, the
    accelerator warning from each rank, and ZeRO-3's checkpoint parsing and progress bars printed by every rank.
    """
    # the ranks' log lines, without their time: the same warning logged twice would show twice here
    warnings = [line.split(" ", 1)[-1] for line in proc.stderr.splitlines() if "warning" in line.lower()]
    repeated = {w: n for w, n in Counter(warnings).items() if n > 1}
    assert repeated == {}
    assert "FutureWarning" not in proc.stderr and "Gathering sharded weights" not in proc.stderr
    assert "Processing zero checkpoint" not in proc.stdout
    # the launcher's own two processes (runner and launch) print it before any dcl-dist code runs; the ranks do not
    assert proc.stdout.count("Setting accelerator to CPU") <= 2


@pytest.mark.slow
def test_three_phase_on_two_ranks_with_the_deepspeed_launcher(tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    proc = launch(
        [deepspeed, "--num_gpus", "2", "--master_port", str(free_port()), "--module", "dcl_dist.cli"],
        [
            "train",
            "--config",
            "configs/quickstart.yaml",
            *short_run(tiny_model, small_data, run_dir),
            "deepspeed.zero_stage=3",
            "checkpoint.keep_finished=true",  # the test reads the finished phase's checkpoint
        ],
    )
    assert "test: accuracy" in proc.stdout
    assert proc.stdout.count("test: accuracy") == 1  # rank 0 alone reports
    assert_quiet(proc)
    summary = proc.stdout[proc.stdout.index("train took") :].splitlines()
    assert [line.split()[0] for line in summary[2:5]] == ["dae", "cl", "ft"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["phases"]) == ["dae", "cl", "ft"]
    ckpt = json.loads(next((run_dir / "ft" / "checkpoints").glob("step_*/complete.json")).read_text())
    assert ckpt["world_size"] == 2
    out = tmp_path / "p.jsonl"
    dcl_dist("predict", "--model", run_dir / "ft" / "artifact", "--input", small_data / "test.jsonl", "--output", out)
    assert len(out.read_text().splitlines()) == metrics["test"]["n"]
    evaluated = dcl_dist("evaluate", "--run", run_dir, "--data", small_data / "test.jsonl")
    assert f"accuracy {metrics['test']['accuracy']:.4f}" in evaluated.stdout


def test_ft_on_two_ranks_with_torchrun(tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "dcl_dist.cli",
        ],
        [
            "train",
            "--config",
            "configs/quickstart.yaml",
            *short_run(tiny_model, small_data, run_dir),
            "run.variant=ft",
            "deepspeed.zero_stage=2",
        ],
    )
    assert proc.stdout.count("test: accuracy") == 1
    assert (run_dir / "ft" / "artifact" / "head" / "model.safetensors").is_file()
