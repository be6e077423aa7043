"""The model card's front matter and sections, from an artifact's dcl_dist.json (no training: a meta dict)."""

from __future__ import annotations

from huggingface_hub import ModelCard

from dcl_dist.model_card import base_model_id, card

CLASSES = ["billing", "card", "fraud"]


def meta(**extra) -> dict:
    per_class = {c: {"precision": 0.9, "recall": 0.8, "f1-score": 0.85, "support": 10} for c in CLASSES}
    return {
        "phase": "ft",
        "variant": "three_phase",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "class_names": CLASSES,
        "pooling": "mean",
        "dense_layers": 2,
        "max_length": 64,
        "head": {"hidden": 384, "head_hidden": 256, "n_classes": 3, "dropout": 0.1, "activation": "relu"},
        "lineage": [{"phase": p, "adapter": None} for p in ("dae", "cl", "ft")],
        "lora": None,
        "metrics": {
            "test": {
                "accuracy": 0.9,
                "macro_f1": 0.85,
                "macro_precision": 0.86,
                "macro_recall": 0.84,
                "n": 30,
                "per_class": per_class,
            },
            "embedding": {"silhouette": 0.3, "knn_accuracy": 0.9},
        },
        "data": {
            "train": "data/train.jsonl",
            "validation": None,
            "test": "data/test.jsonl",
            "sizes": {"train": 40, "validation": 10, "test": 30},
            "class_counts": {"billing": 20, "card": 15, "fraud": 5},
            "imbalance_correction": {
                "imbalance": "paper",
                "min_ratio": 1.5,
                "max_ratio": 4.0,
                "counts": [20, 15, 5],
                "ratios": [1.0, 1.0, 2.5],
                "corrected_counts": [20, 15, 12],
            },
        },
        "config": {"run": {"seed": 13}, "model": {"pooling": "mean"}, "dae": {"epochs": 1, "lr": 5e-5}, "ft": {}},
        **extra,
    }


def test_front_matter_follows_the_hub_spec():
    data = ModelCard(card(meta(), "runs/x/ft/artifact")).data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.library_name == "sentence-transformers"
    assert data.pipeline_tag == "text-classification"
    assert {"dcl-dist", "text-classification", "phase-ft"} <= set(data.tags)
    assert data.metrics == ["accuracy", "f1"]
    results = {(r.metric_type, r.metric_value, r.dataset_split) for r in data.eval_results}
    assert results == {("accuracy", 0.9, "test"), ("f1", 0.85, "test")}


def test_sections_name_phases_data_results_and_usage():
    text = card(meta(), "runs/x/ft/artifact")
    for heading in ("## Method", "## Data", "## Results", "## LoRA lineage", "## Usage"):
        assert heading in text
    assert "| fraud | 5 | 12 | 2.50 |" in text  # class counts before and after the correction
    assert "test (n = 30): accuracy 0.9000, macro-F1 0.8500" in text
    assert "dcl-dist predict --model runs/x/ft/artifact" in text and "SentenceTransformer('runs/x/ft/artifact')" in text
    assert "peft" not in text.split("## Usage")[1]  # no adapter: no peft snippet


def test_an_adapter_export_is_a_peft_card_without_backbone_snippets():
    lora = {"base": "/models/base", "rank": 8, "phases": ["cl", "ft"], "merge_between_phases": True}
    adapter = {"r": 8, "alpha": 16.0, "target_modules": ["query", "value"], "then": "merged"}
    lineage = [{"phase": "dae", "adapter": None}, *({"phase": p, "adapter": adapter} for p in ("cl", "ft"))]
    text = card(meta(form="adapter", lora=lora, lineage=lineage), "out/adapter")
    data = ModelCard(text).data
    assert data.library_name == "peft"
    assert "| cl | r 8, alpha 16.0, on query, value | merged |" in text
    usage = text.split("## Usage")[1]
    assert "PeftModel.from_pretrained(base, 'out/adapter')" in usage and "SentenceTransformer" not in usage


def test_base_model_is_a_hub_id_or_what_the_folder_declares(tmp_path):
    assert base_model_id({"base_model": "org/name"}) == "org/name"
    assert base_model_id({"base_model": str(tmp_path)}) is None  # a folder that does not say
    (tmp_path / "README.md").write_text("---\nbase_model: org/parent\nlicense: mit\n---\n# a fine-tune\n")
    assert base_model_id({"base_model": str(tmp_path)}) == "org/parent"
    assert ModelCard(card(meta(base_model=str(tmp_path / "missing")), "x")).data.base_model is None
