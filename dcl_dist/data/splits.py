"""Train / validation / test splits in memory: the label map, the stratified validation split, subsets."""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dcl_dist.config import Config
from dcl_dist.data.sources import LabelKinds, Record, label_order, read_source, text_and_labels
from dcl_dist.data.streaming import TrainStream, describe_stream
from dcl_dist.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class TextSet:
    """Texts with optional class ids per label level; `ids` are stable sample ids (keys of the noise RNG)."""

    texts: list[str]
    levels: list[tuple[int, ...]] | None = None
    """Per example, the class id at each label level (level 0 = data.label_field); None when unlabelled."""
    ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = list(range(len(self.texts)))

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def labels(self) -> list[int]:
        """Class ids at level 0."""
        if self.levels is None:
            raise ValueError("this set has no labels")
        return [lv[0] for lv in self.levels]

    def subset(self, indices: Iterable[int]) -> TextSet:
        indices = list(indices)
        return TextSet(
            [self.texts[i] for i in indices],
            [self.levels[i] for i in indices] if self.levels is not None else None,
            [self.ids[i] for i in indices],
        )


@dataclass
class Splits:
    train: TextSet | None
    """The training split in memory; None when it is streamed (see stream)."""
    validation: TextSet
    test: TextSet | None
    label_names: list[list[str]]
    """Class names per label level; label_names[0] are the classes the classifier predicts."""
    validation_from_train: bool
    skipped_empty: int = 0
    stream: TrainStream | None = None
    """With data.streaming: the training split as a stream (validation and test are still read in memory)."""

    @property
    def class_names(self) -> list[str]:
        """The classes the classifier predicts (level 0)."""
        return self.label_names[0]


def read_rows(
    source: str, role: str, text_field: str, label_fields: list[str] | None, empty_text: str
) -> tuple[list[str], list[tuple[Any, ...]] | None, int]:
    """(texts, raw labels per level or None, empty texts skipped) of one split, with file:line errors."""
    texts: list[str] = []
    labels: list[tuple[Any, ...]] | None = [] if label_fields else None
    skipped = 0
    kinds = LabelKinds(label_fields or [])
    record: Record | None = None
    for record in read_source(source, role, text_field):
        parsed = text_and_labels(record.where, record.fields, text_field, label_fields or [], empty_text, role)
        if parsed is None:
            skipped += 1
            continue
        if labels is not None:
            kinds.observe(record.where, parsed[1])
            labels.append(parsed[1])
        texts.append(parsed[0])
    if record is None:
        raise DataError(f"{role} split {source}: no rows: check the file (it is empty) or the split name")
    if not texts:
        raise DataError(f"{role} split {source}: every text is empty: check data.text_field")
    if skipped:
        log.warning("%s split %s: skipped %d empty or whitespace-only texts", role, source, skipped)
    return texts, labels, skipped


def stratified_holdout(levels: list[tuple[int, ...]], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): `fraction` of each class (fixed seed); one-example classes stay in train."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, lv in enumerate(levels):
        by_class[lv[0]].append(i)
    rng = random.Random(seed)
    keep, held = [], []
    for label in sorted(by_class):
        members = by_class[label][:]
        rng.shuffle(members)
        n_held = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        held += members[:n_held]
        keep += members[n_held:]
    return sorted(keep), sorted(held)


def stratified_subset(levels: list[tuple[int, ...]], size: int, seed: int) -> list[int]:
    """`size` indices, each class represented in proportion (at least one each), fixed seed."""
    if size >= len(levels):
        return list(range(len(levels)))
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, lv in enumerate(levels):
        by_class[lv[0]].append(i)
    total = len(levels)
    quotas = {c: max(1, int(size * len(m) / total)) for c, m in by_class.items()}
    # hand out what rounding left, largest remainders first
    remainders = sorted(by_class, key=lambda c: -(size * len(by_class[c]) / total - quotas[c]))
    for c in remainders[: max(0, size - sum(quotas.values()))]:
        quotas[c] = min(len(by_class[c]), quotas[c] + 1)
    rng = random.Random(seed)
    chosen = []
    for c in sorted(by_class):
        members = by_class[c][:]
        rng.shuffle(members)
        chosen += members[: quotas[c]]
    return sorted(chosen)


def _to_ids(raw: list[tuple[Any, ...]], names: list[list[str]], role: str, source: str) -> list[tuple[int, ...]]:
    index = [{n: i for i, n in enumerate(level)} for level in names]
    out, unknown = [], [Counter() for _ in names]
    for row in raw:
        ids = []
        for level, value in enumerate(row):
            i = index[level].get(str(value))
            if i is None:
                unknown[level][str(value)] += 1
            ids.append(i if i is not None else -1)
        out.append(tuple(ids))
    for level, counter in enumerate(unknown):
        if counter:
            shown = ", ".join(f"{k!r} ({v})" for k, v in counter.most_common(10))
            raise DataError(
                f"{role} split {source}: labels that train never has: {shown}. The classifier can only predict"
                f" train's labels ({', '.join(names[level][:20])}): fix the labels or add such examples to train"
            )
    return out


def load_splits(cfg: Config) -> Splits:
    """Read train, validation and test as the config says; the label map comes from train."""
    if cfg.data.streaming:
        return _streamed_splits(cfg)
    d = cfg.data
    label_fields = [d.label_field, *d.hierarchy_fields]
    texts, raw, skipped = read_rows(d.train, "train", d.text_field, label_fields, d.empty_text)
    names = [
        [str(v) for v in sorted({row[level] for row in raw}, key=label_order)] for level in range(len(label_fields))
    ]
    train = TextSet(texts, _to_ids(raw, names, "train", d.train))
    if d.max_train_examples is not None and d.max_train_examples < len(train):
        train = train.subset(stratified_subset(train.levels, d.max_train_examples, cfg.run.seed))
        log.info("train: a stratified subset of %d examples (data.max_train_examples)", len(train))

    if d.validation:
        v_texts, v_raw, v_skipped = read_rows(d.validation, "validation", d.text_field, label_fields, d.empty_text)
        validation = TextSet(v_texts, _to_ids(v_raw, names, "validation", d.validation))
        skipped += v_skipped
        from_train = False
    else:
        keep, held = stratified_holdout(train.levels, d.validation_fraction, cfg.run.seed)
        if not held:
            raise DataError(
                f"train split {d.train}: too few examples to hold out a validation split: give data.validation"
            )
        validation, train = train.subset(held), train.subset(keep)
        from_train = True

    test = None
    if d.test:
        t_texts, t_raw, t_skipped = read_rows(d.test, "test", d.text_field, label_fields, d.empty_text)
        test = TextSet(t_texts, _to_ids(t_raw, names, "test", d.test))
        skipped += t_skipped
    return Splits(train, validation, test, names, from_train, skipped)


def _streamed_splits(cfg: Config) -> Splits:
    """Train as a stream (labels from data.class_counts or a counting pass); validation and test in memory."""
    d = cfg.data
    stream = describe_stream(cfg)
    label_fields = [d.label_field, *d.hierarchy_fields]
    loaded, skipped = {}, 0
    for role in ("validation", "test"):
        source = getattr(d, role)
        if source:
            texts, raw, role_skipped = read_rows(source, role, d.text_field, label_fields, d.empty_text)
            loaded[role] = TextSet(texts, _to_ids(raw, stream.label_names, role, source))
            skipped += role_skipped
    return Splits(None, loaded["validation"], loaded.get("test"), stream.label_names, False, skipped, stream)


def load_unlabelled(cfg: Config) -> list[str]:
    """Texts of data.unlabelled (phase 1 only)."""
    texts: list[str] = []
    for source in cfg.data.unlabelled:
        more, _, _ = read_rows(source, "unlabelled", cfg.data.text_field, None, cfg.data.empty_text)
        texts += more
    return texts


def class_counts(levels: list[tuple[int, ...]], n_classes: int) -> list[int]:
    counts = Counter(lv[0] for lv in levels)
    return [counts.get(c, 0) for c in range(n_classes)]
