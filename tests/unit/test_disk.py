"""Disk: a phase's checkpoints go once its artifact is complete (not before, not with checkpoint.keep_finished), and
the summary says what the run directory holds."""

from __future__ import annotations

import pytest

from dcl_dist.config import Config
from dcl_dist.models.artifact import META_FILE
from dcl_dist.pipeline import drop_finished_checkpoints
from dcl_dist.rundir import RunDir
from dcl_dist.summary import disk_usage, human_bytes, summary_text


def fake_phase(run_dir: RunDir, phase: str, complete: bool) -> None:
    """A phase folder with a 1000-byte checkpoint, a 500-byte best and a 2000-byte artifact (complete or not)."""
    phase_dir = run_dir.phase(phase)
    for folder, size in ((phase_dir.checkpoints / "step_00000004", 1000), (phase_dir.best / "step_00000002", 500)):
        folder.mkdir(parents=True)
        (folder / "shard.pt").write_bytes(b"x" * size)
    phase_dir.artifact.mkdir(parents=True)
    (phase_dir.artifact / "model.safetensors").write_bytes(b"x" * 2000)
    if complete:
        (phase_dir.artifact / META_FILE).write_text("{}")


def test_checkpoints_go_once_the_artifact_is_complete(tmp_path):
    run_dir = RunDir(tmp_path)
    fake_phase(run_dir, "dae", complete=True)
    fake_phase(run_dir, "cl", complete=False)  # a crash before its artifact: its checkpoint is what resumes
    cfg = Config()
    for phase in ("dae", "cl"):
        drop_finished_checkpoints(cfg, run_dir.phase(phase))
    assert not run_dir.phase("dae").checkpoints.exists() and not run_dir.phase("dae").best.exists()
    assert (run_dir.phase("dae").artifact / "model.safetensors").is_file()
    assert (run_dir.phase("cl").checkpoints / "step_00000004").is_dir() and run_dir.phase("cl").best.is_dir()


def test_keep_finished_keeps_them(tmp_path):
    run_dir = RunDir(tmp_path)
    fake_phase(run_dir, "ft", complete=True)
    cfg = Config()
    cfg.checkpoint.keep_finished = True
    drop_finished_checkpoints(cfg, run_dir.phase("ft"))
    assert run_dir.phase("ft").checkpoints.is_dir() and run_dir.phase("ft").best.is_dir()


def test_disk_usage_and_summary(tmp_path):
    run_dir = RunDir(tmp_path)
    fake_phase(run_dir, "dae", complete=True)
    fake_phase(run_dir, "ft", complete=True)
    (run_dir.root / "config.yaml").write_text("y" * 100)
    usage = disk_usage(run_dir, ["dae", "ft"])
    assert usage == {"total": 2 * (1000 + 500 + 2000 + 2) + 100, "checkpoints": 3000, "artifacts": 4004}
    metrics = {
        "phases": {
            "dae": {"steps": 4, "history": [{"step": 4, "loss": 5.5}, {"step": 8, "loss": 5.25}]},
            "ft": {
                "steps": 8,
                "select_metric": "macro_f1",
                "history": [{"step": 4, "macro_f1": 0.5}, {"step": 8, "macro_f1": 0.75}],
                "training": {"seconds": 65.0, "samples": 130},
            },
        }
    }
    lines = summary_text(run_dir, ["dae", "cl", "ft"], metrics).splitlines()
    assert lines[0].split() == ["phase", "time", "steps", "samples/s", "best", "validation", "artifact"]
    assert lines[1].split() == ["dae", "-", "4", "-", "loss", "5.2500", str(run_dir.phase("dae").artifact)]
    assert lines[2].split() == ["ft", "1:05", "8", "2.0", "macro_f1", "0.7500", str(run_dir.phase("ft").artifact)]
    assert lines[3] == f"run directory {tmp_path} holds 7.1 kB: artifacts 4.0 kB, checkpoints 3.0 kB"
    assert human_bytes(1.6e9) == "1.6 GB" and human_bytes(999) == "999 B"


def test_a_crash_between_artifact_and_deletion_is_cleaned_up_by_the_rerun(tmp_path, monkeypatch):
    """The re-run skips the finished phase and deletes its checkpoints then; an unfinished phase keeps its own."""
    from types import SimpleNamespace

    from dcl_dist import pipeline

    run_dir = RunDir(tmp_path / "run")
    fake_phase(run_dir, "dae", complete=True)  # the crash came after its artifact, before its checkpoints went
    (run_dir.phase("dae").artifact / META_FILE).write_text('{"lineage": [{"phase": "dae"}]}')
    fake_phase(run_dir, "ft", complete=False)

    class Crash(Exception):
        pass

    def crash(cfg, phase, *args):
        raise Crash(phase)

    monkeypatch.setattr(pipeline, "run_phase", crash)
    # the fake folders are no real run: the checks of its settings, inputs and artifacts are not this test's
    monkeypatch.setattr(pipeline, "check_run_dir", lambda cfg, run_dir, phases: {})
    monkeypatch.setattr(pipeline, "read_meta", lambda artifact: {"lineage": [{"phase": artifact.parent.name}]})
    run_dir.lock_file.touch()  # a run directory (its earlier run held the lock)
    cfg = Config()
    cfg.run.dir, cfg.run.variant = str(run_dir.root), "dae_ft"
    with pytest.raises(Crash, match="^ft$"):  # dae was skipped, ft trained (and crashed again)
        pipeline.run_variant(cfg, splits=SimpleNamespace(class_names=["a", "b"]))
    assert not run_dir.phase("dae").checkpoints.exists() and not run_dir.phase("dae").best.exists()
    assert (run_dir.phase("ft").checkpoints / "step_00000004").is_dir() and run_dir.phase("ft").best.is_dir()
