"""A variant that fixes the imbalance preset (no_imb, extra_imb) and explicit cl ratios must not disagree silently.

`run.variant=extra_imb cl.max_ratio=4` used to train with (1.5, 4), the paper preset's ratios, under the name
extra_imb, and `run.variant=no_imb cl.max_ratio=4` ignored the ratio: both without a word (issue 14, item 7b).
"""

from __future__ import annotations

import pytest

from dcl_dist.config import load_config
from dcl_dist.errors import ConfigError


@pytest.fixture
def train(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a b", "label": "x"}\n{"text": "c d", "label": "y"}\n')
    return str(path)


def config_problems(overrides: list[str]) -> list[str]:
    try:
        load_config(None, overrides)
    except ConfigError as e:
        return e.problems
    return []


def test_extra_imb_with_another_max_ratio_is_an_error(train):
    problems = config_problems([f"data.train={train}", "run.variant=extra_imb", "cl.max_ratio=4"])
    assert len(problems) == 1, "extra_imb with cl.max_ratio=4 runs the paper preset's (1.5, 4) under extra's name"
    assert "cl.max_ratio" in problems[0] and "extra_imb" in problems[0]


def test_extra_imb_with_another_min_ratio_is_an_error(train):
    problems = config_problems([f"data.train={train}", "run.variant=extra_imb", "cl.min_ratio=2"])
    assert len(problems) == 1 and "cl.min_ratio" in problems[0]


def test_no_imb_with_a_ratio_is_an_error(train):
    problems = config_problems([f"data.train={train}", "run.variant=no_imb", "cl.max_ratio=4"])
    assert len(problems) == 1, "no_imb trains without a correction: an explicit ratio would be ignored"
    assert "cl.max_ratio" in problems[0] and "no_imb" in problems[0]


def test_ratios_that_agree_with_the_variant_preset_are_fine(train):
    cfg = load_config(None, [f"data.train={train}", "run.variant=extra_imb", "cl.max_ratio=20", "cl.min_ratio=1.5"])
    assert cfg.imbalance_ratios() == (1.5, 20.0)


def test_three_phase_still_takes_explicit_ratios(train):
    cfg = load_config(None, [f"data.train={train}", "run.variant=three_phase", "cl.max_ratio=6"])
    assert cfg.imbalance_ratios() == (1.5, 6.0)
