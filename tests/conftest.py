"""Fixtures shared by every test: offline mode, the tiny models, the packaged MiniLM and small data sets.

Functions that tests call (free_port, tiny_run, write_corpus, ...) live in helpers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from helpers import SNIPS, make_tiny_model, minilm_path, write_small_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_model_nodrop(tmp_path_factory) -> Path:
    """The tiny model without dropout: runs that must agree number for number."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_bert_nodrop"), dropout=0.0)


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def snips() -> Path:
    """The SNIPS subset shipped in tests/data/snips: train.jsonl (350), validation.jsonl (140), test.jsonl (250)."""
    return SNIPS


@pytest.fixture(scope="session")
def snips_small(tmp_path_factory) -> Path:
    """The first 240 lines of the shipped SNIPS train split (a few seconds of training for a tiny model)."""
    path = tmp_path_factory.mktemp("snips_small") / "train.jsonl"
    with open(SNIPS / "train.jsonl", encoding="utf-8") as f:
        path.write_text("".join(line for _, line in zip(range(240), f)), encoding="utf-8")
    return path


@pytest.fixture
def small_data(tmp_path) -> Path:
    """A small labelled jsonl dataset (3 imbalanced classes) with train and test files."""
    return write_small_dataset(tmp_path)
