"""slurm/submit.sh and slurm/phase.sbatch on this machine, with stand-in sbatch, srun and scontrol on PATH
(tests/integration/slurm_stubs: they record their arguments; srun starts the ranks locally) and a small scheduler
here that runs the queue as SLURM would: a job starts once its afterok dependency has completed, a requeued job
starts again with SLURM_RESTART_COUNT + 1.

The chained submission of three_phase (dae -> cl -> ft, 2 ranks each), in which the dae job is told to stop as
`--signal=B:USR1` tells it before its time limit: it checkpoints, requeues itself, and its second start resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import REPO, free_port, read_scalars, short_run
from integration.cli import env

pytestmark = [pytest.mark.integration, pytest.mark.multiproc, pytest.mark.slow]

STUBS = Path(__file__).parent / "slurm_stubs"
DAE_STEPS = 8


class Scheduler:
    """Runs the stand-in sbatch's queue in submission order, as far as dependencies allow."""

    def __init__(self, root: Path):
        self.root = root
        (root / "jobs").mkdir(parents=True)
        self.env = {
            **env(),
            "PATH": f"{STUBS}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "FAKE_SLURM_DIR": str(root),
            # job ids whose rendezvous port (20000 + id % 20000, as phase.sbatch picks it) is free here
            "FAKE_SLURM_FIRST_JOB_ID": str(free_port() % 20000),
        }

    def jobs(self) -> list[dict]:
        return sorted((json.loads(p.read_text()) for p in (self.root / "jobs").glob("*.json")), key=lambda j: j["id"])

    def calls(self, command: str) -> list[list[str]]:
        lines = (self.root / "calls.jsonl").read_text().splitlines()
        return [c["argv"] for c in map(json.loads, lines) if c["command"] == command]

    def run(self, on_start: Callable[[dict, subprocess.Popen], None] | None = None) -> None:
        """Run jobs until none can start; on_start(job, batch shell) may act on each running job."""
        while True:
            states = {j["id"]: j["state"] for j in self.jobs()}
            ready = [j for j in self.jobs() if j["state"] == "PENDING" and self._dependency_met(j, states)]
            if not ready:
                return
            self._start(ready[0], on_start)

    @staticmethod
    def _dependency_met(job: dict, states: dict) -> bool:
        dependency = job["options"].get("dependency")
        return dependency is None or states[int(dependency.removeprefix("afterok:"))] == "COMPLETED"

    def _start(self, job: dict, on_start) -> None:
        log = self.root / f"{job['options']['job-name']}-{job['id']}.out"  # --output=%x-%j.out
        slurm = {
            "SLURM_JOB_ID": str(job["id"]),
            "SLURM_JOB_NAME": job["options"]["job-name"],
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_NNODES": job["options"]["nodes"],
            "SLURM_NTASKS_PER_NODE": job["options"]["ntasks-per-node"],
            "SLURM_SUBMIT_DIR": job["cwd"],
            "SLURM_RESTART_COUNT": str(job["starts"]),
        }
        with open(log, "a") as out:  # --open-mode=append: a requeued job's log goes on in the same file
            shell = subprocess.Popen(
                ["bash", job["script"], *job["args"]],
                env={**job["env"], **slurm},
                cwd=job["cwd"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            if on_start is not None:
                on_start(job, shell)
            status = shell.wait(timeout=600)
        job = json.loads((self.root / "jobs" / f"{job['id']}.json").read_text())
        job["starts"] += 1
        job["state"] = "PENDING" if job["requeue"] else ("COMPLETED" if status == 0 else "FAILED")
        job["requeue"] = False
        (self.root / "jobs" / f"{job['id']}.json").write_text(json.dumps(job))


def test_chained_phases_with_a_preempted_job_that_requeues_and_resumes(tiny_model, small_data, tmp_path):
    slurm = Scheduler(tmp_path / "slurm")
    run_dir = tmp_path / "run"
    overrides = [
        *short_run(tiny_model, small_data, run_dir),
        "dae.epochs=2",
        f"dae.max_steps={DAE_STEPS}",
        "dae.micro_batch_size_per_rank=4",
        "dae.log_every_steps=1",
        "checkpoint.every_steps=2",
    ]
    submitted = subprocess.run(
        ["bash", "slurm/submit.sh", "--config", "configs/quickstart.yaml", "--gpus-per-node", "2", *overrides],
        capture_output=True,
        text=True,
        env=slurm.env,
        cwd=REPO,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr
    dae, cl, ft = slurm.jobs()
    assert f"run directory {run_dir}, phases: dae cl ft" in submitted.stdout
    assert [line.split(": job ")[1] for line in submitted.stdout.splitlines() if ": job " in line] == [
        str(j["id"]) for j in (dae, cl, ft)
    ]
    assert [j["args"][:2] for j in (dae, cl, ft)] == [[p, "configs/quickstart.yaml"] for p in ("dae", "cl", "ft")]
    assert [j["options"].get("dependency") for j in (dae, cl, ft)] == [
        None,
        f"afterok:{dae['id']}",
        f"afterok:{cl['id']}",
    ]
    assert all(j["options"]["ntasks-per-node"] == "2" and j["options"]["signal"] == "B:USR1@300" for j in (dae, cl, ft))

    stopped_at: list[int] = []

    def preempt_dae_once(job: dict, shell: subprocess.Popen) -> None:
        """The first dae start: SIGUSR1 to the batch shell alone, once the job's first checkpoint is complete."""
        if job["id"] != dae["id"] or job["starts"] > 0:
            return
        deadline = time.monotonic() + 300
        while not (run_dir / "dae" / "checkpoints" / f"step_{2:08d}").exists():
            assert shell.poll() is None and time.monotonic() < deadline, "dae ended before its first checkpoint"
            time.sleep(0.02)
        shell.send_signal(signal.SIGUSR1)
        shell.wait(timeout=300)
        stopped_at.append(
            json.loads(next((run_dir / "dae" / "checkpoints").glob("step_*/complete.json")).read_text())["step"]
        )

    slurm.run(preempt_dae_once)

    assert [(j["state"], j["starts"]) for j in slurm.jobs()] == [("COMPLETED", 2), ("COMPLETED", 1), ("COMPLETED", 1)]
    assert slurm.calls("scontrol").count(["requeue", str(dae["id"])]) == 1
    assert ["show", "hostnames", "localhost"] in slurm.calls("scontrol")
    sruns = slurm.calls("srun")
    assert len(sruns) == 4  # dae twice, cl, ft
    assert all(s[:3] == ["--nodes=1", "--ntasks-per-node=2", "--kill-on-bad-exit=1"] for s in sruns)
    assert [s[s.index("--phase") + 1] for s in sruns] == ["dae", "dae", "cl", "ft"]

    log = (slurm.root / f"dcl-dae-{dae['id']}.out").read_text()
    (step,) = stopped_at
    assert 2 <= step < DAE_STEPS
    checkpoint = run_dir / "dae" / "checkpoints" / f"step_{step:08d}"
    assert "SIGUSR1 received: the ranks finish their step, write a checkpoint and stop" in log
    assert f"dcl-dist: stopped on SIGUSR1 at dae step {step} of {DAE_STEPS}, checkpoint {checkpoint}" in log
    assert "phase dae stopped on SIGUSR1 (exit " in log and f"requeueing job {dae['id']}" in log
    assert f"job {dae['id']}, start 2: phase dae on 1 nodes x 2 ranks, rendezvous localhost:" in log
    assert f"resuming from {checkpoint}: step {step} of {DAE_STEPS}" in log
    assert [s for s, _ in read_scalars(run_dir / "tb" / "dae", "dae/loss")] == list(range(1, DAE_STEPS + 1))

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["phases"]) == ["dae", "cl", "ft"] and metrics["test"]["n"] > 0
