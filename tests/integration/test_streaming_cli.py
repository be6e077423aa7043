"""`dcl-dist train` with data.streaming end to end: every phase of three_phase reads train as a stream."""

from __future__ import annotations

import json
import math

import pytest

from helpers import stream_overrides, write_corpus
from integration.cli import dcl_dist

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_three_phase_streams_every_phase(tiny_model, tmp_path):
    write_corpus(tmp_path, {"weather": 40, "music": 16, "food": 4}, files=2)
    run_dir = tmp_path / "run"
    proc = dcl_dist(
        "train",
        "--config",
        "configs/quickstart.yaml",
        *stream_overrides(tmp_path),
        f"data.test={tmp_path / 'validation.jsonl'}",
        f"data.unlabelled={tmp_path / 'extra.txt'}",
        f"model.name_or_path={tiny_model}",
        "model.max_length=24",
        "cl.batching=class_aware",
        "dae.micro_batch_size_per_rank=8",
        "cl.micro_batch_size_per_rank=8",
        "ft.micro_batch_size_per_rank=8",
        "ft.epochs=2",
        "logging.progress_bar=false",
    )
    assert "test: accuracy" in proc.stdout
    assert "train stream" in proc.stderr and "60 records in 3 classes, unlabelled: 40 records" in proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # one epoch of each phase: dae over train + unlabelled, cl over the expected corrected size, ft over train
    assert metrics["phases"]["dae"]["steps"] == 13  # ceil((60 + 40) / 8)
    correction = metrics["phases"]["cl"]["imbalance_correction"]
    assert correction["counts"] == [4, 16, 40]  # food, music, weather
    assert correction["corrected_counts"][0] > 4 and correction["corrected_counts"][2] == 40
    expected_size = round(sum(n * r for n, r in zip([4, 16, 40], correction["ratios"])))
    assert metrics["phases"]["cl"]["steps"] == math.ceil(expected_size / 8)
    assert metrics["phases"]["ft"]["steps"] <= 2 * 8  # ceil(60 / 8) an epoch; early stopping may end it sooner
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    counted = json.loads((run_dir / "stream_counts.json").read_text())
    assert counted["train"] == [[["food", "music", "weather"], [4, 16, 40]]] and counted["unlabelled"] == 40
