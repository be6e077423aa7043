"""A phase records what identified its inputs (inputs.py) and the pipeline refuses to resume or reuse it once a
data file or the base model changed at the same path; data.test alone is only noted."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from dcl_dist import dist, inputs
from dcl_dist.config import load_config
from dcl_dist.errors import ConfigError
from dcl_dist.pipeline import check_run_dir
from dcl_dist.rundir import RunDir


def write_rows(path, n, label="a"):
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": label}) + "\n" for i in range(n)))
    return path


@pytest.fixture
def trained(tmp_path, tiny_model):
    """A config over copies of the data and model, and a run directory whose phase ft recorded those inputs."""
    data = tmp_path / "data"
    data.mkdir()
    model = shutil.copytree(tiny_model, tmp_path / "model")
    for name in ("train", "validation", "test"):
        write_rows(data / f"{name}.jsonl", 6)
    cfg = load_config(
        None,
        [
            f"run.dir={tmp_path / 'run'}",
            "run.variant=ft",
            f"model.name_or_path={model}",
            *(f"data.{name}={data / f'{name}.jsonl'}" for name in ("train", "validation", "test")),
        ],
    )
    phase_dir = RunDir(cfg.run.dir).phase("ft")
    phase_dir.root.mkdir(parents=True)
    phase_dir.inputs_file.write_text(json.dumps(inputs.identify(inputs.phase_inputs(cfg, "ft"))))
    dist.init()
    return cfg, data, model


def test_unchanged_inputs_pass_and_a_touched_small_file_is_still_the_same(trained):
    cfg, data, _ = trained
    check_run_dir(cfg, RunDir(cfg.run.dir), ("ft",))
    os.utime(data / "train.jsonl", ns=(1, 1))  # hashed whole: the same content, whatever its time
    check_run_dir(cfg, RunDir(cfg.run.dir), ("ft",))


@pytest.mark.parametrize("what", ["train", "validation", "model weights", "model config"])
def test_a_changed_input_refuses_the_phase_naming_the_file(trained, what):
    cfg, data, model = trained
    changed = {
        "train": data / "train.jsonl",
        "validation": data / "validation.jsonl",
        "model weights": model / "model.safetensors",
        "model config": model / "config.json",
    }[what]
    content = bytearray(changed.read_bytes())
    content[-2] = ord(" ") if content[-2] != ord(" ") else ord("\t")  # same size, other content
    changed.write_bytes(bytes(content))
    with pytest.raises(ConfigError) as e:
        check_run_dir(cfg, RunDir(cfg.run.dir), ("ft",))
    message = str(e.value)
    assert f"{cfg.run.dir}/ft was trained on other inputs" in message and f"{changed}: changed (" in message
    assert "put the earlier files back, use a new run.dir, or delete" in message


def test_a_large_file_whose_only_change_is_its_time_names_how_to_confirm(trained, monkeypatch):
    cfg, data, _ = trained
    monkeypatch.setattr(inputs, "WHOLE_HASH_LIMIT", 10)  # every file is "large": sampled
    monkeypatch.setattr(inputs, "SAMPLE", 4)
    phase_dir = RunDir(cfg.run.dir).phase("ft")
    phase_dir.inputs_file.write_text(json.dumps(inputs.identify(inputs.phase_inputs(cfg, "ft"))))
    os.utime(data / "train.jsonl", ns=(2_000_000_000, 2_000_000_000))
    with pytest.raises(ConfigError, match="its size and its first and last MiB are the same.*touch -m -d @"):
        check_run_dir(cfg, RunDir(cfg.run.dir), ("ft",))


def test_files_added_to_or_gone_from_a_glob_are_named(tmp_path):
    write_rows(tmp_path / "part-0.jsonl", 3)
    write_rows(tmp_path / "part-1.jsonl", 3)
    glob = {"data.train": str(tmp_path / "part-*.jsonl")}
    before = inputs.identify(glob)
    (tmp_path / "part-1.jsonl").unlink()
    write_rows(tmp_path / "part-2.jsonl", 3)
    refused, noted = inputs.changes(before, inputs.identify(glob))
    assert refused == [
        f"data.train {tmp_path / 'part-1.jsonl'}: no longer there",
        f"data.train {tmp_path / 'part-2.jsonl'}: a file it did not have",
    ]
    assert noted == []


def test_a_changed_test_file_is_only_noted(trained, caplog, monkeypatch):
    cfg, data, _ = trained
    monkeypatch.setattr("dcl_dist.pipeline._finished_artifact_damage", lambda phase_dir: None)  # a stand-in artifact
    write_rows(data / "test.jsonl", 9, label="b")
    run = RunDir(cfg.run.dir)
    (run.phase("ft").artifact).mkdir()
    (run.phase("ft").artifact / "dcl_dist.json").write_text("{}")  # finished: its test metrics are the old file's
    check_run_dir(cfg, run, ("ft",))
    assert f"data.test {data / 'test.jsonl'}: changed" in caplog.text
    assert f"dcl-dist evaluate --run {run.root} --data <test file> gives the new ones" in caplog.text


def test_a_damaged_record_names_itself(trained):
    cfg, _, _ = trained
    RunDir(cfg.run.dir).phase("ft").inputs_file.write_text("{not json")
    with pytest.raises(ConfigError, match="ft/inputs.json is damaged"):
        check_run_dir(cfg, RunDir(cfg.run.dir), ("ft",))
