"""State shared by the stand-in SLURM commands of tests/integration/test_slurm.py: a folder ($FAKE_SLURM_DIR) that
records every call (calls.jsonl) and holds the queue (one jobs/<id>.json per submission)."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(os.environ["FAKE_SLURM_DIR"])
JOBS = ROOT / "jobs"


def record(command: str, argv: list[str]) -> None:
    with open(ROOT / "calls.jsonl", "a") as f:
        f.write(json.dumps({"command": command, "argv": argv}) + "\n")


def read_job(job_id: int) -> dict:
    return json.loads((JOBS / f"{job_id}.json").read_text())


def write_job(job: dict) -> None:
    JOBS.mkdir(parents=True, exist_ok=True)
    (JOBS / f"{job['id']}.json").write_text(json.dumps(job, indent=1))
