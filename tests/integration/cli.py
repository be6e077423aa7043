"""Running the dcl-dist command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def env() -> dict:
    # an in-process dist.init (unit tests) names this process rank 0 of 1 and serves MASTER_PORT: children
    # must not inherit that
    e = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def dcl_dist(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """`dcl-dist ARGS` in a fresh process; raises with its output if it fails and check is set."""
    proc = subprocess.run(
        [sys.executable, "-m", "dcl_dist.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"dcl-dist {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-6000:]}"
        )
    return proc


def tiny_overrides(model: Path, data: Path, run_dir: Path) -> list[str]:
    """A config on the command line: tiny model, a few steps per phase, no progress bar."""
    return [
        f"run.dir={run_dir}",
        f"model.name_or_path={model}",
        "model.max_length=24",
        f"data.train={data / 'train.jsonl'}",
        f"data.test={data / 'test.jsonl'}",
        "dae.max_steps=3",
        "cl.max_steps=3",
        "joint.max_steps=3",
        "ft.epochs=2",
        "ft.max_steps=6",
        "dae.micro_batch_size_per_rank=8",
        "cl.micro_batch_size_per_rank=8",
        "joint.micro_batch_size_per_rank=8",
        "ft.micro_batch_size_per_rank=8",
        "ft.lr=1e-3",
        "logging.progress_bar=false",
        "checkpoint.every_steps=2",
    ]
