import json

import pytest

from dcl_dist.config import load_config
from dcl_dist.errors import ConfigError, DataError
from dcl_dist.pipeline import run_variant


def one_class_config(tmp_path, tiny_model, *extra):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": "only"}) + "\n" for i in range(20)))
    return load_config(
        None, [f"run.dir={tmp_path / 'run'}", f"data.train={path}", f"model.name_or_path={tiny_model}", *extra]
    )


def test_a_single_class_is_refused_before_training(tmp_path, tiny_model):
    with pytest.raises(DataError, match="single class \\(only\\): phase cl cannot contrast classes"):
        run_variant(one_class_config(tmp_path, tiny_model))
    assert not (tmp_path / "run" / "dae").exists()


def test_a_phase_outside_the_variant_is_refused(tmp_path, tiny_model):
    with pytest.raises(ConfigError, match="--phase cl is not a phase of variant ft"):
        run_variant(one_class_config(tmp_path, tiny_model, "run.variant=ft"), only_phase="cl")
