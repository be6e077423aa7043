"""The deepspeed launcher and torchrun start dcl-dist on 2 CPU ranks; the artifacts load back and predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, free_port, short_run
from integration.cli import dcl_dist, env

pytestmark = [pytest.mark.integration, pytest.mark.multiproc]


def launch(launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


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
        ],
    )
    assert "test: accuracy" in proc.stdout
    assert proc.stdout.count("test: accuracy") == 1  # rank 0 alone reports
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
