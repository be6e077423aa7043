"""`dcl-dist train` end to end with a tiny model: every variant in one process, re-runs that skip finished
phases, a changed setting that is refused, and the artifacts' predict and evaluate commands."""

from __future__ import annotations

import json

import pytest

from dcl_dist import cli
from dcl_dist.config import VARIANTS
from helpers import short_run
from integration.cli import dcl_dist

pytestmark = pytest.mark.integration


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_and_predicts(variant, tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = dcl_dist(
        "train",
        "--config",
        "configs/quickstart.yaml",
        *short_run(tiny_model, small_data, run_dir),
        f"run.variant={variant}",
    )
    assert "test: accuracy" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["phases"]) == list(VARIANTS[variant])
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["test"]["n"] > 0
    for phase in VARIANTS[variant]:
        embedding = metrics["phases"][phase]["embedding"]
        assert -1.0 <= embedding["silhouette"] <= 1.0 and 0.0 <= embedding["knn_accuracy"] <= 1.0
        assert (run_dir / "tb" / phase / "projector_config.pbtxt").is_file()
        meta = json.loads((run_dir / phase / "artifact" / "dcl_dist.json").read_text())
        assert meta["phase"] == phase
        assert [p["phase"] for p in meta["lineage"]] == list(VARIANTS[variant][: VARIANTS[variant].index(phase) + 1])
    expected_dense = {"three_phase": 2, "no_imb": 2, "extra_imb": 2, "joint": 2, "dae_ft": 1, "cl_ft": 1, "ft": 0}
    assert (
        json.loads((run_dir / "ft" / "artifact" / "dcl_dist.json").read_text())["dense_layers"]
        == expected_dense[variant]
    )
    if variant in ("three_phase", "no_imb", "extra_imb"):
        record = metrics["phases"]["cl"]["imbalance_correction"]
        assert record["imbalance"] == {"three_phase": "paper", "no_imb": "none", "extra_imb": "extra"}[variant]

    out = tmp_path / "predictions.jsonl"
    # in this process (the training above ran in its own): a predict subprocess would only import torch again
    argv = ["predict", "--model", run_dir / "ft" / "artifact", "--input", small_data / "test.jsonl", "--output", out]
    assert cli.main([str(a) for a in argv]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == metrics["test"]["n"]
    assert set(rows[0]["probabilities"]) == {"food", "music", "weather"}
    assert abs(sum(rows[0]["probabilities"].values()) - 1.0) < 1e-4
    assert rows[0]["label"] == max(rows[0]["probabilities"], key=rows[0]["probabilities"].get)


@pytest.mark.slow
def test_rerun_skips_finished_phases_and_refuses_changed_settings(tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = short_run(tiny_model, small_data, run_dir)
    dcl_dist("train", "--config", "configs/quickstart.yaml", *overrides)
    stamps = {p: (run_dir / p / "artifact" / "dcl_dist.json").stat().st_mtime_ns for p in ("dae", "cl", "ft")}
    again = dcl_dist("train", "--config", "configs/quickstart.yaml", *overrides)
    assert again.stderr.count("finished earlier") == 3
    assert stamps == {p: (run_dir / p / "artifact" / "dcl_dist.json").stat().st_mtime_ns for p in stamps}

    changed = dcl_dist("train", "--config", "configs/quickstart.yaml", *overrides, "cl.lr=1e-4", check=False)
    assert changed.returncode == 2
    assert "cl.lr" in changed.stderr and "run.dir" in changed.stderr and "Traceback" not in changed.stderr


@pytest.mark.slow
def test_one_phase_at_a_time(tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = short_run(tiny_model, small_data, run_dir)
    early = dcl_dist("train", "--config", "configs/quickstart.yaml", "--phase", "cl", *overrides, check=False)
    assert early.returncode == 2 and "run --phase dae first" in early.stderr
    for phase in ("dae", "cl", "ft"):
        dcl_dist("train", "--config", "configs/quickstart.yaml", "--phase", phase, *overrides)
        assert (run_dir / phase / "artifact" / "dcl_dist.json").is_file()
    evaluated = dcl_dist("evaluate", "--run", run_dir, "--data", small_data / "test.jsonl")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"accuracy {metrics['test']['accuracy']:.4f}" in evaluated.stdout


def test_bad_config_is_one_clear_message(tmp_path):
    proc = dcl_dist("train", "--config", "configs/quickstart.yaml", "cl.imbalanse=paper", "dae.lr=-1", check=False)
    assert proc.returncode == 2
    assert "2 problems" in proc.stderr and "did you mean 'cl.imbalance'" in proc.stderr
    assert "Traceback" not in proc.stderr
