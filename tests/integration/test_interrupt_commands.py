"""A Ctrl-C or SIGTERM where there is no training to keep (predict, evaluate, export, and train's start-up while
it loads the model) ends the command at once with one message and exit status 75, never a traceback, and the
earlier output is as it was: nothing half-written is left beside it."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_damaged_files import finished, run_command, user_files  # noqa: F401 - fixtures

from dcl_dist.errors import Interrupted
from integration.cli import env

pytestmark = pytest.mark.integration


def signal_self(name: str):
    """A stand-in that sends this process `name` (as a user's Ctrl-C or a scheduler's SIGTERM would) and goes on."""

    def send(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, name))
        raise AssertionError("the signal did not stop the command at once")

    return send


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def case_dir(user_files, finished, tmp_path, monkeypatch) -> Path:  # noqa: F811
    root = Path(shutil.copytree(user_files, tmp_path / "case"))
    shutil.copytree(finished, root / "run")
    (root / "p.jsonl").write_text("earlier predictions\n")
    (root / "m.json").write_text("{}")
    monkeypatch.chdir(root)
    return root


CASES = {
    "predict while it predicts": (
        "dcl_dist.inference.Predictor.probabilities",
        ["predict", "--model", "run/ft/artifact", "--input", "test.jsonl", "--output", "p.jsonl", "--overwrite"],
    ),
    "evaluate while it evaluates": (
        "dcl_dist.inference.Predictor.probabilities",
        ["evaluate", "--run", "run", "--data", "test.jsonl", "--output", "m.json", "--overwrite"],
    ),
    "predict while the model loads": (
        "dcl_dist.models.artifact.load_backbone",
        ["predict", "--model", "run/ft/artifact", "--input", "test.jsonl", "--output", "p.jsonl", "--overwrite"],
    ),
    "export while it writes": (
        "dcl_dist.export.write_artifact",
        ["export", "--run", "run", "--to", "merged", "--out", "run/export/merged"],
    ),
}


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_stop_request_ends_the_command_at_once_leaving_the_earlier_output(
    case_dir, capsys, monkeypatch, case, signal_name
):
    target, argv = CASES[case]
    monkeypatch.setattr(target, signal_self(signal_name))
    before = tree(case_dir)
    code, err = run_command(argv, capsys)
    assert code == Interrupted.exit_code and "Traceback" not in err, err
    messages = [line for line in err.splitlines() if line.startswith("dcl-dist")]
    assert messages == [
        f"dcl-dist: stopped on {signal_name}: nothing was written, and an earlier output is as it was: run the same"
        " command again"
    ]
    assert tree(case_dir) == before  # no temporary file, no half export left behind


STARTUP = """
import os, signal, sys
from dcl_dist.models import encoder
from dcl_dist.phases import start

def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    raise AssertionError("the signal did not stop the command at once")

encoder.load_backbone = start.load_backbone = interrupted
from dcl_dist import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_ctrl_c_while_train_loads_the_model_is_one_message(user_files, tmp_path):  # noqa: F811
    root = Path(shutil.copytree(user_files, tmp_path / "case"))
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP, "train", "--config", "config.yaml"],
        capture_output=True,
        text=True,
        env=env(),
        cwd=root,
    )
    assert proc.returncode == Interrupted.exit_code and "Traceback" not in proc.stderr, proc.stderr
    messages = [line for line in proc.stderr.splitlines() if line.startswith("dcl-dist")]
    assert messages == [
        "dcl-dist: stopped on SIGINT: finished phases and the last checkpoint are kept: run the same command again"
    ]
