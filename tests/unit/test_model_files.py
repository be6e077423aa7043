"""Model folders and DeepSpeed files are checked before anything loads them: each damage is one problem naming
the file (models/files.py, config/preflight.py), where the loaders would raise from deep inside or half-load."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch

from dcl_dist.config import load_config
from dcl_dist.errors import ConfigError, ModelError
from dcl_dist.models.files import (
    json_problem,
    max_positions,
    model_folder_problems,
    safetensors_problem,
    torch_archive_problem,
)

TRAIN = "data.train=any/hub_dataset"  # a hub name: nothing to read


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(300))


def wrong_json_type(path: Path) -> None:
    path.write_text("[1, 2, 3]")


DAMAGES = {"truncated": truncate, "emptied": empty, "random bytes": random_bytes, "missing": Path.unlink}


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
def test_each_damaged_model_file_is_named_before_anything_loads(model_copy, name, damage):
    DAMAGES[damage](model_copy / name)
    problems = model_folder_problems(model_copy)
    if damage == "missing" and name == "tokenizer_config.json":
        assert problems == []  # optional: transformers builds the tokenizer from tokenizer.json alone
        return
    assert len(problems) == 1 and str(model_copy) in problems[0] and name in problems[0], problems


def test_an_intact_folder_has_no_problem_and_a_wrong_json_type_is_one(model_copy):
    assert model_folder_problems(model_copy) == []
    wrong_json_type(model_copy / "config.json")
    assert model_folder_problems(model_copy) == [
        f"{model_copy / 'config.json'} is damaged: it holds list, not an object {{...}}"
    ]


def test_the_readers_name_what_is_wrong(tmp_path, model_copy):
    weights = model_copy / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:-10])
    assert f"truncated ({size - 10} bytes, its tensors need {size})" in safetensors_problem(weights)
    (tmp_path / "x.json").write_text("{oops")
    assert "not valid JSON (Expecting property name" in json_problem(tmp_path / "x.json")
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    assert "not a complete torch file" in torch_archive_problem(tmp_path / "x.pt")
    assert torch_archive_problem(tmp_path / "none.pt") == f"{tmp_path / 'none.pt'} is missing"


def test_the_pre_flight_check_names_a_damaged_model_file_and_every_other_problem_at_once(model_copy):
    truncate(model_copy / "model.safetensors")
    with pytest.raises(ConfigError) as e:
        load_config(None, [TRAIN, f"model.name_or_path={model_copy}", "ft.lr=-1"])
    assert len(e.value.problems) == 2
    assert f"'model.name_or_path' {model_copy / 'model.safetensors'} is damaged: truncated" in str(e.value)


def test_max_length_beyond_the_models_positions_is_refused_before_it_loads(model_copy):
    assert max_positions(model_copy) == 128  # tests/helpers.py: max_position_embeddings=128
    with pytest.raises(ConfigError, match="'model.max_length' is 512, but .* reads at most 128 tokens"):
        load_config(None, [TRAIN, f"model.name_or_path={model_copy}", "model.max_length=512"])
    load_config(None, [TRAIN, f"model.name_or_path={model_copy}", "model.max_length=128"])


DEEPSPEED_FILES = {
    "not JSON": ('{"train_batch_size": ', "is damaged: not valid JSON"),
    "empty": ("", "is empty"),
    "a list": ("[1]", "it holds list, not an object"),
    "a misspelt key": ('{"trian_batch_size": 8}', "unknown key 'trian_batch_size': did you mean 'train_batch_size'?"),
    "a wrong type": ('{"gradient_accumulation_steps": "two"}', "'gradient_accumulation_steps' is 'two': it must be"),
    "a section that is no object": ('{"zero_optimization": 2}', "'zero_optimization' is 2: it must be an object"),
}


@pytest.mark.parametrize("case", list(DEEPSPEED_FILES))
def test_a_bad_deepspeed_file_is_one_problem_naming_it(tmp_path, case):
    text, expected = DEEPSPEED_FILES[case]
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(None, [TRAIN, f"deepspeed.config_file={path}"])
    assert str(path) in str(e.value) and expected in str(e.value)


def test_deepspeeds_own_refusals_name_the_file(tmp_path):
    """What only DeepSpeed knows (a key it forbids inside a section) is read when the pipeline starts: one message."""
    from dcl_dist import engine

    template = json.loads((Path(engine.TEMPLATES) / "zero2.json").read_text())
    template["zero_optimization"]["stagee"] = 2
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(template))
    cfg = load_config(None, [TRAIN, f"deepspeed.config_file={path}"])  # JSON and the main keys are fine
    with pytest.raises(
        ConfigError, match=f"'deepspeed.config_file' {path}: DeepSpeed refuses it for phase dae .*stagee"
    ):
        engine.check_config_file(cfg, ("dae",))
    template["zero_optimization"].pop("stagee")
    path.write_text(json.dumps(template))
    engine.check_config_file(cfg, ("dae", "ft"))


def test_a_deepspeed_file_is_checked_before_an_auto_micro_batch_is_chosen(tmp_path):
    """micro_batch_size_per_rank: auto is chosen when the phase starts; the file's check runs before and must not
    trip over the not yet chosen size (a TypeError once), nor leave the size changed."""
    from dcl_dist import engine

    path = tmp_path / "ds.json"
    path.write_text((Path(engine.TEMPLATES) / "zero2.json").read_text())
    cfg = load_config(
        None,
        [TRAIN, f"deepspeed.config_file={path}", "dae.micro_batch_size_per_rank=auto", "dae.global_batch_size=64"],
    )
    engine.check_config_file(cfg, ("dae", "ft"))
    assert cfg.dae.micro_batch_size_per_rank == "auto"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"r": "big"}, "'r' is 'big'"),
        ({"r": 0}, "'r' is 0"),
        ({"peft_type": "NOPE"}, "'peft_type' is 'NOPE'"),
        ({"peft_type": None}, "'peft_type' is None"),
        ({"base_model_name_or_path": 5}, "'base_model_name_or_path' is 5"),
        ({"target_modules": 5}, "'target_modules' is 5"),
        ({"lora_alpha": "x"}, "'lora_alpha' is 'x'"),
    ],
)
def test_an_adapter_config_of_the_wrong_types_is_named_not_taken_as_it_comes(tmp_path, change, named):
    from safetensors.torch import save_file

    from dcl_dist.models.lora import read_adapter

    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "m", "target_modules": ["q"]}
    save_file({"x": torch.zeros(2)}, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ModelError, match=f"adapter_config.json is damaged: {re.escape(named)}, which no LoRA adapter"):
        read_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    assert read_adapter(tmp_path).config.r == 4
