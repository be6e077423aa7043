"""The packaged all-MiniLM-L6-v2 on real data (../shared/data/snips, 7 intents): the whole 3-phase method
on a 350-example stratified subset of train, early stopping on 140 validation examples (20 per intent, written
to a temporary file), evaluated on the full 700-example test split."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from integration.cli import dcl_dist

pytestmark = pytest.mark.integration

CHANCE = 1 / 7
THRESHOLD = 0.80
"""Test accuracy the run must reach: far above chance (0.143); the full-data method reaches 0.98."""


def validation_subset(source, out, per_class: int = 20):
    """The first per_class rows of each label of a jsonl file (its order is fixed, so the subset is too)."""
    kept = defaultdict(list)
    for line in source.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if len(kept[row["label"]]) < per_class:
            kept[row["label"]].append(line)
    out.write_text("".join(line + "\n" for rows in kept.values() for line in rows), encoding="utf-8")
    return out


def test_minilm_three_phase_on_snips(minilm, snips, tmp_path):
    run_dir = tmp_path / "run"
    validation = validation_subset(snips / "validation.jsonl", tmp_path / "validation.jsonl")
    dcl_dist(
        "train",
        "--config",
        "configs/quickstart.yaml",
        f"run.dir={run_dir}",
        f"model.name_or_path={minilm}",
        "model.max_length=32",
        f"data.train={snips / 'train.jsonl'}",
        f"data.validation={validation}",
        f"data.test={snips / 'test.jsonl'}",
        "data.max_train_examples=350",
        "dae.max_steps=12",
        "cl.max_steps=12",
        "ft.epochs=3",
        "ft.patience=2",
        "ft.lr=1e-4",
        "logging.progress_bar=false",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n"] == 700
    assert metrics["test"]["accuracy"] >= THRESHOLD > CHANCE, metrics["test"]
    assert metrics["test"]["macro_f1"] >= THRESHOLD - 0.05
    cl = metrics["phases"]["cl"]["history"][-1]
    assert cl["knn_accuracy"] >= THRESHOLD  # the clusters phase 2 made already separate the intents
