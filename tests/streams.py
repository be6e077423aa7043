"""Small labelled corpora written as stream shards (jsonl), with a validation file and an unlabelled .txt."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
        (folder / f"train-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[a:b]))
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    (folder / "extra.txt").write_text("".join(f"unlabelled {r['text']}\n" for r in rows[:unlabelled]))
    return rows


def stream_overrides(folder: Path) -> list[str]:
    """Config overrides that stream the corpus of write_corpus (run.dir inside the folder)."""
    return [
        f"run.dir={folder / 'run'}",
        f"data.train={folder / 'train-*.jsonl'}",
        f"data.validation={folder / 'validation.jsonl'}",
        "data.streaming=true",
    ]
