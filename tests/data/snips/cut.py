"""Writes this folder from a full copy of the SNIPS split (train 13,084 / validation 700 / test 700).

    python tests/data/snips/cut.py PATH/TO/snips     # the folder with train.jsonl, validation.jsonl, test.jsonl

Deterministic: the same source gives byte-identical files (README.md lists their sha256).
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

SEED = 13
"""configs/quickstart.yaml's run.seed: train is the subset that data.max_train_examples=350 picked in that run."""
TRAIN_SIZE = 350
VALIDATION_PER_CLASS = 20
TEST_SIZE = 250


def stratified_subset(labels: list[str], size: int, seed: int) -> list[int]:
    """`size` indices in file order, each class in proportion (largest remainders first), drawn with a seeded shuffle.

    The rule of dcl_dist's data.max_train_examples (classes in sorted order, one random.Random for all)."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    quotas = {c: max(1, int(size * len(m) / len(labels))) for c, m in by_class.items()}
    remainders = sorted(by_class, key=lambda c: -(size * len(by_class[c]) / len(labels) - quotas[c]))
    for c in remainders[: max(0, size - sum(quotas.values()))]:
        quotas[c] = min(len(by_class[c]), quotas[c] + 1)
    rng = random.Random(seed)
    chosen = []
    for c in sorted(by_class):
        members = by_class[c][:]
        rng.shuffle(members)
        chosen += members[: quotas[c]]
    return sorted(chosen)


def first_per_class(labels: list[str], per_class: int) -> list[int]:
    """The first `per_class` indices of each class, in file order."""
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for i, label in enumerate(labels):
        if seen[label] < per_class:
            seen[label] += 1
            kept.append(i)
    return kept


def main(source: Path, out: Path) -> None:
    for split, pick in (
        ("train", lambda labels: stratified_subset(labels, TRAIN_SIZE, SEED)),
        ("validation", lambda labels: first_per_class(labels, VALIDATION_PER_CLASS)),
        ("test", lambda labels: stratified_subset(labels, TEST_SIZE, SEED)),
    ):
        lines = (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        kept = pick([json.loads(line)["label"] for line in lines])
        (out / f"{split}.jsonl").write_text("".join(lines[i] + "\n" for i in kept), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
