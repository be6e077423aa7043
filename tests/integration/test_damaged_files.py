"""Damaged files fed to every command (train, plan, predict, evaluate, export, keys): model folders, artifacts, the
run directory's records, config and DeepSpeed files, checkpoints. Whatever the damage (truncated, emptied, random
bytes, the wrong JSON type, missing), the command ends in one message that names the file, with exit status 2 or 3
(0 where a damaged checkpoint is set aside for an intact one), never a traceback, and no file the user had is
changed or lost: every file outside what the command owns hashes the same before and after.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dcl_dist import cli
from helpers import REPO, write_small_dataset
from integration.cli import env

pytestmark = pytest.mark.integration


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def emptied(path: Path) -> None:
    path.write_bytes(b"")


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(path.name).randbytes(512))


def wrong_json_type(path: Path) -> None:
    path.write_text('["a JSON list where an object belongs"]')


def missing(path: Path) -> None:
    path.unlink()


BINARY_DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": truncated,
    "emptied": emptied,
    "random bytes": random_bytes,
    "missing": missing,
}
JSON_DAMAGES = {**BINARY_DAMAGES, "wrong JSON type": wrong_json_type}


def damages_of(name: str) -> dict[str, Callable[[Path], None]]:
    return JSON_DAMAGES if name.endswith(".json") else BINARY_DAMAGES


def hashes(root: Path, owned: list[Path]) -> dict[str, str]:
    """sha256 of every file under root, except under the paths the command owns."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path == o or o in path.parents for o in owned):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_command(argv: list[str], capsys) -> tuple[int, str]:
    """cli.main in this process: an exception that escapes it is a traceback, and fails the test right there."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def run_process(argv: list[str], cwd: Path) -> tuple[int, str]:
    """dcl-dist in a fresh process (training: DeepSpeed keeps its process group from one run to the next)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dcl_dist.cli", *map(str, argv)], capture_output=True, text=True, env=env(), cwd=cwd
    )
    return proc.returncode, proc.stderr


def assert_one_message(code: int, err: str, damaged: Path, codes=(2, 3)) -> None:
    """One `dcl-dist:` message naming the damaged file (its path as the user wrote it, from the current directory,
    or whole; or its folder and its name), with an allowed exit status."""
    assert code in codes, err
    assert "Traceback" not in err
    messages = [line for line in err.splitlines() if line.startswith("dcl-dist")]
    assert len(messages) == 1, err

    def as_written(path: Path) -> set[str]:
        return {str(path), str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)}

    named = any(n in err for n in as_written(damaged))
    assert named or (damaged.name in err and any(n in err for n in as_written(damaged.parent))), err


@pytest.fixture(scope="module")
def user_files(tmp_path_factory, tiny_model) -> Path:
    """What a user has: data, a model folder, a config and a DeepSpeed file (each case works on a copy)."""
    root = tmp_path_factory.mktemp("user")
    write_small_dataset(root)
    shutil.copytree(tiny_model, root / "model")
    shutil.copy(REPO / "configs" / "deepspeed" / "zero2.json", root / "ds.json")
    config = {
        "run": {"dir": "run", "variant": "ft"},
        "model": {"name_or_path": "model", "max_length": 24},
        "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "ft": {"max_steps": 6, "micro_batch_size_per_rank": 8, "eval_every_steps": 2},
        # keep_finished: the checkpoints of the finished phase are what the checkpoint cases damage
        "checkpoint": {"every_steps": 2, "keep_finished": True},
        "logging": {"progress_bar": False, "tensorboard": False},
    }
    (root / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    return root


@pytest.fixture
def case_dir(user_files, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the user's files, as the current directory."""
    root = Path(shutil.copytree(user_files, tmp_path / "case"))
    monkeypatch.chdir(root)
    return root


# ---------------------------------------------------------------------------------------------------------------------
# The base model folder and the config files: train and plan stop in the pre-flight check, before any model loads

MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
INPUT_CASES = [
    (f"model/{name}", damage)
    for name in MODEL_FILES
    for damage in damages_of(name)
    if (name, damage) != ("tokenizer_config.json", "missing")  # optional: tokenizer.json alone makes the tokenizer
] + [("ds.json", damage) for damage in JSON_DAMAGES]


@pytest.mark.parametrize("command", ["train", "plan"])
@pytest.mark.parametrize(("file", "damage"), INPUT_CASES, ids=[f"{f}-{d}" for f, d in INPUT_CASES])
def test_a_damaged_model_or_deepspeed_file(case_dir, capsys, command, file, damage):
    JSON_DAMAGES[damage](case_dir / file)
    before = hashes(case_dir, [])
    code, err = run_command([command, "--config", "config.yaml", "deepspeed.config_file=ds.json"], capsys)
    assert_one_message(code, err, case_dir / file)
    assert hashes(case_dir, [case_dir / "run"]) == before
    assert not (case_dir / "run" / "config.yaml").exists()  # refused before the run directory is written


CONFIG_DAMAGES = {"emptied": emptied, "random bytes": random_bytes, "wrong type": wrong_json_type, "missing": missing}


@pytest.mark.parametrize("command", ["train", "plan"])
@pytest.mark.parametrize("damage", list(CONFIG_DAMAGES))
def test_a_damaged_config_file(case_dir, capsys, command, damage):
    CONFIG_DAMAGES[damage](case_dir / "config.yaml")
    before = hashes(case_dir, [])
    code, err = run_command([command, "--config", "config.yaml"], capsys)
    if damage == "emptied":  # an empty config is all defaults: the one key without a default is named
        assert code == 2 and "'data.train' is empty" in err and "Traceback" not in err
    else:
        assert_one_message(code, err, case_dir / "config.yaml")
    assert hashes(case_dir, []) == before


def test_keys_reads_no_file(case_dir, capsys):
    code, err = run_command(["keys", "ft.lr"], capsys)
    assert code == 0 and err == ""


# ---------------------------------------------------------------------------------------------------------------------
# A finished run's artifact: predict, evaluate and export check every file before loading any


@pytest.fixture(scope="module")
def finished(tmp_path_factory, user_files) -> Path:
    """A run directory of variant ft whose artifact is written (untrained: what matters here is its files)."""
    from transformers import AutoTokenizer

    from dcl_dist.config import dump_yaml, load_config
    from dcl_dist.models.artifact import write_artifact
    from dcl_dist.models.encoder import SentenceEncoder, load_backbone
    from dcl_dist.models.head import ClassifierHead

    run = tmp_path_factory.mktemp("finished") / "run"
    model = str(user_files / "model")
    cfg = load_config(None, ["data.train=any/hub", "run.variant=ft", f"model.name_or_path={model}"])
    (run / "ft").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    encoder = SentenceEncoder(load_backbone(model), "mean", 1)
    meta = {"phase": "ft", "variant": "ft", "class_names": ["food", "music", "weather"], "lineage": [], "lora": None}
    head = ClassifierHead(encoder.hidden_size, 16, 3)
    write_artifact(run / "ft" / "artifact", encoder, AutoTokenizer.from_pretrained(model), meta, 24, head)
    return run


ARTIFACT_FILES = [
    "dcl_dist.json",
    "config.json",
    "model.safetensors",
    "head/model.safetensors",
    "2_Dense/model.safetensors",
    "tokenizer.json",
]
ARTIFACT_CASES = [(name, damage) for name in ARTIFACT_FILES for damage in damages_of(name)]
COMMANDS = {
    "predict": lambda: ["predict", "--model", "run/ft/artifact", "--input", "test.jsonl", "--output", "p.jsonl"],
    "evaluate": lambda: ["evaluate", "--run", "run", "--data", "test.jsonl", "--output", "m.json"],
    "export": lambda: ["export", "--run", "run", "--to", "merged", "--out", "exported"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(("file", "damage"), ARTIFACT_CASES, ids=[f"{f}-{d}" for f, d in ARTIFACT_CASES])
def test_a_damaged_artifact(case_dir, finished, capsys, command, file, damage):
    shutil.copytree(finished, case_dir / "run")
    damaged = case_dir / "run" / "ft" / "artifact" / file
    JSON_DAMAGES[damage](damaged)
    before = hashes(case_dir, [])
    code, err = run_command(COMMANDS[command](), capsys)
    assert_one_message(code, err, damaged)
    assert hashes(case_dir, []) == before  # nothing written, nothing partial left behind


@pytest.mark.parametrize("damage", list(JSON_DAMAGES))
def test_a_damaged_run_config_for_export(case_dir, finished, capsys, damage):
    shutil.copytree(finished, case_dir / "run")
    damaged = case_dir / "run" / "config.yaml"
    wrong = {"wrong JSON type": wrong_json_type}
    {**JSON_DAMAGES, **wrong}[damage](damaged)
    before = hashes(case_dir, [])
    code, err = run_command(COMMANDS["export"](), capsys)
    assert_one_message(code, err, damaged)
    assert hashes(case_dir, []) == before


def test_the_same_files_intact_work(case_dir, finished, capsys):
    """The cases above fail for the damage they name: the untouched run predicts, evaluates and exports."""
    shutil.copytree(finished, case_dir / "run")
    for command in COMMANDS.values():
        code, err = run_command(command(), capsys)
        assert code == 0, err
    assert (case_dir / "p.jsonl").is_file() and (case_dir / "m.json").is_file() and (case_dir / "exported").is_dir()


# ---------------------------------------------------------------------------------------------------------------------
# The records of a run directory that train reads: settings.json and inputs.json


@pytest.mark.parametrize("record", ["settings.json", "inputs.json"])
@pytest.mark.parametrize("damage", ["truncated", "emptied", "random bytes", "wrong JSON type"])
def test_a_damaged_run_record(case_dir, finished, capsys, record, damage):
    shutil.copytree(finished, case_dir / "run")
    damaged = case_dir / "run" / "ft" / record
    damaged.write_text(json.dumps({"model": {"pooling": "mean"}, "data.train": {"source": "x", "files": {}}}))
    JSON_DAMAGES[damage](damaged)
    before = hashes(case_dir, [])
    code, err = run_command(["train", "--config", "config.yaml"], capsys)
    assert_one_message(code, err, damaged)
    assert hashes(case_dir, [case_dir / "run" / ".lock"]) == before  # not even config.yaml rewritten


FINISHED_CASES = [c for c in ARTIFACT_CASES if c != ("dcl_dist.json", "missing")]  # without it: not finished


@pytest.mark.parametrize(("file", "damage"), FINISHED_CASES, ids=[f"{f}-{d}" for f, d in FINISHED_CASES])
def test_a_finished_phase_with_a_damaged_artifact_is_not_skipped_as_if_all_were_well(
    case_dir, finished, capsys, file, damage
):
    """train skips a finished phase without loading its artifact: the files are checked, and the run stops naming
    the damaged one rather than ending with exit 0 on an artifact that predict and export cannot read."""
    shutil.copytree(finished, case_dir / "run")
    damaged = case_dir / "run" / "ft" / "artifact" / file
    JSON_DAMAGES[damage](damaged)
    before = hashes(case_dir, [])
    code, err = run_command(["train", "--config", "config.yaml"], capsys)
    assert_one_message(code, err, damaged)
    assert "phase ft finished earlier, but its artifact is damaged" in err
    assert hashes(case_dir, [case_dir / "run" / ".lock"]) == before


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints (slow: a trained run, resumed): a damaged one is set aside and an intact one resumes, or exit 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory, user_files) -> Path:
    """user_files with run/ trained for 6 steps of phase ft (checkpoints at steps 4 and 6, best weights)."""
    root = Path(shutil.copytree(user_files, tmp_path_factory.mktemp("trained") / "user"))
    code, err = run_process(["train", "--config", "config.yaml"], root)
    assert code == 0, err
    assert sorted(p.name for p in (root / "run" / "ft" / "checkpoints").glob("step_*")) == [
        "step_00000004",
        "step_00000006",
    ]
    return root


NEWEST = "run/ft/checkpoints/step_00000006"
CHECKPOINT_CASES = {
    "complete.json not JSON": (f"{NEWEST}/complete.json", truncated, 0),
    "complete.json a list": (f"{NEWEST}/complete.json", wrong_json_type, 0),
    "complete.json missing": (f"{NEWEST}/complete.json", missing, 0),
    "rank state truncated": (f"{NEWEST}/rank0.pt", truncated, 0),
    "rank state random bytes": (f"{NEWEST}/rank0.pt", random_bytes, 0),
    "weights emptied": (f"{NEWEST}/mp_rank_00_model_states.pt", emptied, 0),
    "weights missing": (f"{NEWEST}/mp_rank_00_model_states.pt", missing, 0),
    "best weights truncated": ("run/ft/best/step_*/mp_rank_00_model_states.pt", truncated, 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_a_damaged_checkpoint(trained, tmp_path, monkeypatch, case):
    file, damage, expected = CHECKPOINT_CASES[case]
    root = Path(shutil.copytree(trained, tmp_path / "case"))
    monkeypatch.chdir(root)
    shutil.rmtree(root / "run" / "ft" / "artifact")  # the phase goes on from its checkpoints to write it again
    (damaged,) = root.glob(file)
    damage(damaged)
    kept = hashlib.sha256(damaged.read_bytes()).hexdigest() if damaged.exists() else None
    before = hashes(root, [root / "run"])
    code, err = run_process(["train", "--config", "config.yaml"], root)
    assert "Traceback" not in err and code == expected, err
    if expected == 3:
        assert_one_message(code, err, damaged)
    else:
        aside = root / "run" / "ft" / "checkpoints" / "damaged-step_00000006"
        assert aside.is_dir() and (root / "run" / "ft" / "artifact" / "dcl_dist.json").is_file()
        if kept is not None:  # the damaged file itself is kept for a look, never deleted
            assert hashlib.sha256((aside / damaged.name).read_bytes()).hexdigest() == kept
    assert hashes(root, [root / "run"]) == before


@pytest.mark.slow
def test_every_checkpoint_damaged_stops_with_exit_3_naming_the_newest(trained, tmp_path, monkeypatch):
    root = Path(shutil.copytree(trained, tmp_path / "case"))
    monkeypatch.chdir(root)
    shutil.rmtree(root / "run" / "ft" / "artifact")
    for step in ("step_00000004", "step_00000006"):
        emptied(root / "run" / "ft" / "checkpoints" / step / "rank0.pt")
    code, err = run_process(["train", "--config", "config.yaml"], root)
    assert_one_message(code, err, root / NEWEST / "rank0.pt", codes=(3,))
    assert "no other complete checkpoint to resume from" in err
