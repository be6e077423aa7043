"""`dcl-dist train` with LoRA, then `dcl-dist export` to each form and `dcl-dist predict` from each: adapters
merged between phases (one stacked adapter on the base model) or carried on (one adapter of rank r)."""

from __future__ import annotations

import json

import pytest

from dcl_dist.cli import main
from helpers import short_run
from integration.cli import dcl_dist

pytestmark = pytest.mark.integration

R = 4
FORMS = ("adapter", "merged", "sentence-transformers")


def _train(tiny_model, small_data, run_dir, *extra: str) -> None:
    dcl_dist(
        "train",
        "--config",
        "configs/quickstart.yaml",
        *short_run(tiny_model, small_data, run_dir),
        "lora.enabled=true",
        f"lora.r={R}",
        *extra,
    )


def _predict(model, data, out) -> list[dict]:
    assert main(["predict", "--model", str(model), "--input", str(data / "test.jsonl"), "--output", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def _same_predictions(a: list[dict], b: list[dict]) -> bool:
    return [r["label"] for r in a] == [r["label"] for r in b] and all(
        abs(x["probabilities"][c] - y["probabilities"][c]) <= 1e-5 for x, y in zip(a, b) for c in x["probabilities"]
    )


@pytest.mark.slow
def test_merged_chain_exports_three_forms_that_predict_alike(tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    _train(tiny_model, small_data, run_dir)
    meta = json.loads((run_dir / "ft" / "artifact" / "dcl_dist.json").read_text())
    assert [(e["phase"], e["adapter"]["r"], e["adapter"]["then"]) for e in meta["lineage"]] == [
        ("dae", R, "merged"),
        ("cl", R, "merged"),
        ("ft", R, "merged"),
    ]
    assert meta["lora"]["phases"] == ["dae", "cl", "ft"] and meta["lora"]["rank"] == 3 * R

    reference = _predict(run_dir / "ft" / "artifact", small_data, tmp_path / "artifact.jsonl")
    for form in FORMS:
        assert main(["export", "--run", str(run_dir), "--to", form]) == 0
        out = run_dir / "export" / form
        assert _same_predictions(_predict(out, small_data, tmp_path / f"{form}.jsonl"), reference), form
    adapter_config = json.loads((run_dir / "export" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 3 * R and adapter_config["base_model_name_or_path"] == str(tiny_model)
    assert not (run_dir / "export" / "merged" / "adapter").exists()


def test_carried_adapter_keeps_its_rank(tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    _train(tiny_model, small_data, run_dir, "run.variant=dae_ft", "lora.merge_between_phases=false")
    meta = json.loads((run_dir / "ft" / "artifact" / "dcl_dist.json").read_text())
    assert [e["adapter"]["then"] for e in meta["lineage"]] == ["carried on", "carried on"]
    assert main(["export", "--run", str(run_dir), "--to", "adapter", "--out", str(tmp_path / "shipped")]) == 0
    assert json.loads((tmp_path / "shipped" / "adapter_config.json").read_text())["r"] == R
    reference = _predict(run_dir / "ft" / "artifact", small_data, tmp_path / "artifact.jsonl")
    assert _same_predictions(_predict(tmp_path / "shipped", small_data, tmp_path / "shipped.jsonl"), reference)


@pytest.mark.slow
def test_adapter_export_of_a_phase_without_lora_is_one_clear_error(tiny_model, small_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    _train(tiny_model, small_data, run_dir, "run.variant=dae_ft", "lora.phases=[dae]")
    assert main(["export", "--run", str(run_dir), "--to", "adapter"]) == 2
    err = capsys.readouterr().err
    assert "phase ft trained every backbone weight" in err and "--to merged" in err and "Traceback" not in err
    assert main(["export", "--run", str(run_dir), "--to", "adapter", "--phase", "dae"]) == 0
