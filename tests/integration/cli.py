"""Running the dcl-dist command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO

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
