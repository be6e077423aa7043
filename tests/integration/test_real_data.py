"""The packaged all-MiniLM-L6-v2 on real data (tests/data/snips: 7 intents of SNIPS, shipped with the repository):
the whole 3-phase method on 350 training examples (the stratified subset that data.max_train_examples=350 takes of
the full split), early stopping on 140 validation examples (20 per intent), evaluated on 250 test examples."""

from __future__ import annotations

import json

import pytest

from integration.cli import dcl_dist

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHANCE = 1 / 7
THRESHOLD = 0.80
"""Test accuracy the run must reach: far above chance (0.143); the full-data method reaches 0.98."""


def test_minilm_three_phase_on_snips(minilm, snips, tmp_path):
    run_dir = tmp_path / "run"
    dcl_dist(  # about 2 minutes on 2 quiet cores; the limit leaves room for a loaded machine
        "train",
        "--config",
        "configs/quickstart.yaml",
        f"run.dir={run_dir}",
        f"model.name_or_path={minilm}",
        "model.max_length=32",
        f"data.train={snips / 'train.jsonl'}",
        f"data.validation={snips / 'validation.jsonl'}",
        f"data.test={snips / 'test.jsonl'}",
        "dae.max_steps=12",
        "cl.max_steps=12",
        "ft.epochs=3",
        "ft.patience=2",
        "ft.lr=1e-4",
        "logging.progress_bar=false",
        timeout=1800,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n"] == 250
    assert metrics["test"]["accuracy"] >= THRESHOLD > CHANCE, metrics["test"]
    assert metrics["test"]["macro_f1"] >= THRESHOLD - 0.05
    cl = metrics["phases"]["cl"]["history"][-1]
    assert cl["knn_accuracy"] >= THRESHOLD  # the clusters phase 2 made already separate the intents
