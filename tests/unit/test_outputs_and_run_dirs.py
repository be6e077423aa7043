"""Nothing the user had is lost: outputs are written whole or not at all (atomic.py); export and predict replace
only what they wrote before unless told --overwrite; a run directory is held by one run at a time and a folder
with other files is never taken for one; a run of another config leaves config.yaml alone."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from dcl_dist import atomic, dist, run_lock
from dcl_dist.cli import output_file
from dcl_dist.config import dump_yaml, load_config
from dcl_dist.errors import ConfigError, DclDistError
from dcl_dist.export import check_target
from dcl_dist.pipeline import prepare_run_dir, run_variant
from dcl_dist.rundir import RunDir


def test_an_output_that_fails_midway_leaves_the_earlier_file_as_it_was(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text("earlier\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic.open_for_writing(path) as f:
            f.write("half of the new")
            raise KeyboardInterrupt
    assert path.read_text() == "earlier\n" and os.listdir(tmp_path) == ["predictions.jsonl"]
    atomic.write_text(path, "new\n")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["predictions.jsonl"]


def test_a_folder_replaced_midway_is_as_it_was(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "weights").write_text("earlier")
    with pytest.raises(OSError):
        with atomic.replacing_folder(out) as new:
            new.mkdir()
            (new / "weights").write_text("half")
            raise OSError(28, "No space left on device")
    assert (out / "weights").read_text() == "earlier" and os.listdir(tmp_path) == ["export"]
    with atomic.replacing_folder(out) as new:
        new.mkdir()
        (new / "weights").write_text("new")
    assert (out / "weights").read_text() == "new" and os.listdir(tmp_path) == ["export"]


def test_output_files_are_checked_before_anything_loads(tmp_path):
    existing = tmp_path / "p.jsonl"
    existing.write_text("mine")
    with pytest.raises(DclDistError, match="p.jsonl exists: add --overwrite to replace it"):
        output_file(str(existing), False, [])
    assert output_file(str(existing), True, []) == existing
    with pytest.raises(DclDistError, match="is the input file"):
        output_file(str(existing), True, [str(existing)])
    with pytest.raises(DclDistError, match="does not exist: create it first"):
        output_file(str(tmp_path / "nowhere" / "p.jsonl"), False, [])
    with pytest.raises(DclDistError, match="is a folder"):
        output_file(str(tmp_path), True, [])


@pytest.fixture
def run_dir(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "runs" / "x")
    run.root.mkdir(parents=True)
    (run.root / "config.yaml").write_text("run: {variant: ft}\n")
    return run


def test_export_never_replaces_the_run_or_what_holds_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (run_dir.root, run_dir.root.parent, tmp_path):
        with pytest.raises(DclDistError, match="is the run directory|is the current directory"):
            check_target(out, run_dir, "merged", overwrite=True)
    with pytest.raises(DclDistError, match="inside the run directory"):
        check_target(run_dir.root / "ft", run_dir, "merged", overwrite=True)
    check_target(run_dir.export("merged"), run_dir, "merged", overwrite=False)


def test_export_replaces_an_earlier_export_of_its_form_and_nothing_else_without_overwrite(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dcl_dist.json").write_text(json.dumps({"form": "merged"}))
    check_target(out, run_dir, "merged", overwrite=False)
    with pytest.raises(DclDistError, match="not an earlier --to adapter export"):
        check_target(out, run_dir, "adapter", overwrite=False)
    (out / "notes.txt").write_text("mine")
    (out / "dcl_dist.json").unlink()
    with pytest.raises(DclDistError, match="is not empty and is not an earlier --to merged export"):
        check_target(out, run_dir, "merged", overwrite=False)
    check_target(out, run_dir, "merged", overwrite=True)
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(DclDistError, match="is a file"):
        check_target(tmp_path / "a-file", run_dir, "merged", overwrite=False)


def _hold_and_wait(root: str, ready, done) -> None:
    with run_lock.hold(RunDir(root)):
        ready.set()
        done.wait(60)


def test_a_second_run_on_a_held_run_directory_is_refused_naming_the_first(tmp_path):
    ctx = multiprocessing.get_context("fork")  # the holder only takes the lock: no need to start a new interpreter
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_and_wait, args=(str(tmp_path), ready, done))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(run_lock.RunDirInUse) as e:
            with run_lock.hold(RunDir(tmp_path)):
                pass
        assert f"run.dir {tmp_path} is in use by another dcl-dist run (host " in str(e.value)
        assert f"pid {holder.pid}" in str(e.value) and f"kill -TERM {holder.pid}" in str(e.value)
    finally:
        done.set()
        holder.join(60)
    with run_lock.hold(RunDir(tmp_path)):  # released when its holder ended
        pass


def test_a_folder_with_other_files_is_not_a_run_directory(tmp_path):
    dist.init()
    (tmp_path / "thesis.tex").write_text("mine")
    cfg = load_config(None, ["data.train=any/hub", f"run.dir={tmp_path}"], preflight=False)
    with pytest.raises(ConfigError, match="is a folder with other files \\(thesis.tex, ...\\), not a dcl_dist run"):
        prepare_run_dir(cfg)
    assert os.listdir(tmp_path) == ["thesis.tex"]
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg))  # a run directory from before the lock file
    assert prepare_run_dir(cfg).root == Path(tmp_path)


def test_a_run_of_another_config_leaves_the_run_directorys_config_alone(tmp_path, tiny_model):
    run = tmp_path / "run"
    cfg = load_config(
        None, ["data.train=any/hub", f"run.dir={run}", "run.variant=ft", f"model.name_or_path={tiny_model}"]
    )
    (run / "ft").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    (run / "ft" / "settings.json").write_text(json.dumps({"model": {"pooling": "cls"}}))
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="ft was trained with other settings"):
        run_variant(cfg)
    assert (run / "config.yaml").read_text() == before


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '"a string"', '{"key": {"k": 1}, "train": 5}', "\x00\xff"])
def test_a_damaged_stream_counts_file_is_counted_again_never_a_traceback(tmp_path, text):
    from dcl_dist.data.streaming.counting import _read_counts

    path = tmp_path / "stream_counts.json"
    path.write_bytes(text.encode("latin-1"))  # the last: bytes that are not UTF-8
    assert _read_counts(path, {"k": 1}) is None
    path.write_text(json.dumps({"key": {"k": 1}, "train": [[["a", "b"], [3, 4]]], "unlabelled": 7}))
    assert _read_counts(path, {"k": 1}) == {"train": [(["a", "b"], [3, 4])], "unlabelled": 7}
    assert _read_counts(path, {"k": 2}) is None
