"""launch/ and slurm/submit.sh print the exact command they run, and run nothing with --dry-run; two "nodes" on
this machine, each started with NODE_RANK (deepspeed --no_ssh, as on a cluster without ssh), train together."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, free_port, short_run
from integration.cli import env

pytestmark = pytest.mark.integration

NO_CLUSTER = {"NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "DCL_LAUNCHER"}


def script(path: str, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in env().items() if k not in NO_CLUSTER}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}"
    return subprocess.run(
        ["bash", path, *args], capture_output=True, text=True, env={**base, **extra_env}, cwd=REPO, timeout=300
    )


def printed(proc: subprocess.CompletedProcess) -> list[list[str]]:
    """The commands a script printed ('+ ' lines), as argument lists."""
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


TRAIN = ["--module", "dcl_dist.cli", "train", "--config", "my.yaml"]


@pytest.mark.parametrize("phase", ["dae", "cl", "ft", "joint"])
def test_each_phase_script_on_one_node(phase):
    (cmd,) = printed(script(f"launch/{phase}.sh", "--config", "my.yaml", "--gpus", "4", "--dry-run", "cl.lr=1e-5"))
    assert cmd == ["deepspeed", "--master_port", "29500", "--num_gpus", "4", *TRAIN, "--phase", phase, "cl.lr=1e-5"]


def test_the_variant_script_on_many_nodes():
    over_ssh = printed(
        script("launch/variant.sh", "--config", "my.yaml", "--hostfile", "launch/hostfile.example", "--dry-run")
    )
    assert over_ssh == [["deepspeed", "--master_port", "29500", "--hostfile", "launch/hostfile.example", *TRAIN]]
    each_node = printed(
        script(
            "launch/variant.sh",
            "--config",
            "my.yaml",
            "--hostfile",
            "launch/hostfile.example",
            "--dry-run",
            NODE_RANK="1",
            MASTER_ADDR="node001",
            MASTER_PORT="6000",
        )
    )
    assert each_node == [
        [
            "deepspeed",
            "--master_port",
            "6000",
            "--hostfile",
            "launch/hostfile.example",
            "--master_addr",
            "node001",
            "--no_ssh",
            "--node_rank",
            "1",
            *TRAIN,
        ]
    ]
    torchrun = printed(
        script(
            "launch/variant.sh",
            "--config",
            "my.yaml",
            "--launcher",
            "torchrun",
            "--gpus",
            "8",
            "--dry-run",
            NNODES="4",
            NODE_RANK="3",
            MASTER_ADDR="node001",
        )
    )
    assert torchrun == [
        [
            "torchrun",
            "--nnodes",
            "4",
            "--nproc_per_node",
            "8",
            "--master_port",
            "29500",
            "--node_rank",
            "3",
            "--master_addr",
            "node001",
            "-m",
            "dcl_dist.cli",
            "train",
            "--config",
            "my.yaml",
        ]
    ]


def test_launch_mistakes_are_one_line_with_the_fix():
    no_hostfile = script("launch/variant.sh", "--config", "my.yaml", "--dry-run", NNODES="2")
    assert no_hostfile.returncode == 2 and "need --hostfile (or use --launcher torchrun)" in no_hostfile.stderr
    torchrun = script("launch/variant.sh", "--config", "my.yaml", "--launcher", "torchrun", "--nodes", "2", "--dry-run")
    assert torchrun.returncode == 2 and "needs MASTER_ADDR and NODE_RANK" in torchrun.stderr
    assert script("launch/ft.sh", "--gpus", "2").stderr == "launch: --config FILE is required\n"


def test_submit_dry_run_prints_the_chain_and_submits_nothing(tmp_path):
    fake = {"FAKE_SLURM_DIR": str(tmp_path)}
    stubs = Path(__file__).parent / "slurm_stubs"
    proc = script(
        "slurm/submit.sh",
        "--config",
        "configs/quickstart.yaml",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--dry-run",
        "run.variant=joint",
        PATH=f"{stubs}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **fake,
    )
    commands = printed(proc)
    assert [c[c.index("--job-name") + 1] for c in commands] == ["dcl-joint", "dcl-ft"]
    assert commands[1][commands[1].index("--dependency") + 1] == "afterok:<joint>"
    assert all(c[-3:] == [c[-3], "configs/quickstart.yaml", "run.variant=joint"] for c in commands)
    assert not (tmp_path / "calls.jsonl").exists()


def test_the_phase_job_prints_its_srun_command():
    job = {"SLURM_JOB_ID": "4711", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_NODELIST": "gpu7"}
    proc = script("slurm/phase.sbatch", "--dry-run", "cl", "my.yaml", "cl.lr=1e-5", **job)
    assert "phase cl on 2 nodes x 8 ranks, rendezvous gpu7:24711" in proc.stdout
    assert printed(proc) == [
        [
            "srun",
            "--nodes=2",
            "--ntasks-per-node=8",
            "--kill-on-bad-exit=1",
            "python",
            "-u",
            "-m",
            "dcl_dist.cli",
            "train",
            "--config",
            "my.yaml",
            "--phase",
            "cl",
            "cl.lr=1e-5",
        ]
    ]


@pytest.mark.slow
def test_two_nodes_each_started_with_node_rank(tiny_model, small_data, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")  # two names for this machine: two "nodes"
    run_dir = tmp_path / "run"
    args = [
        "--config",
        "configs/quickstart.yaml",
        "--hostfile",
        str(hostfile),
        *short_run(tiny_model, small_data, run_dir),
        "checkpoint.keep_finished=true",  # the test reads the finished phase's checkpoint
    ]
    cluster = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    base = {k: v for k, v in env().items() if k not in NO_CLUSTER}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}"
    nodes = [
        subprocess.Popen(
            ["bash", "launch/dae.sh", *args],
            env={**base, **cluster, "NODE_RANK": str(rank)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (1, 0)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[1][-3000:]
    assert "--no_ssh --node_rank 0" in outputs[1] and "--no_ssh --node_rank 1" in outputs[0]
    saved = json.loads(next((run_dir / "dae" / "checkpoints").glob("step_*/complete.json")).read_text())
    assert saved["world_size"] == 2 and (run_dir / "dae" / "artifact" / "dcl_dist.json").is_file()
