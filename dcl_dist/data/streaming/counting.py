"""The counting pass: the training stream's labels and sizes, counted once by every rank over its share (or
given as data.class_counts), and kept in the run directory for a re-run over the same files."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcl_dist import dist
from dcl_dist.config import Config
from dcl_dist.data.sources import expand_paths, label_order, looks_like_path
from dcl_dist.data.streaming.reading import read_share
from dcl_dist.errors import DataError
from dcl_dist.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class TrainStream:
    """The training split as a stream: its sources, its labels and what is known of its size."""

    source: str
    unlabelled: list[str]
    label_names: list[list[str]]
    """Class names per label level, in the order of the in-memory label map."""
    class_counts: list[int]
    """Examples per class (level 0), from the counting pass or data.class_counts."""
    unlabelled_records: int | None = None
    """Records of data.unlabelled; counted only when phase dae needs an epoch length."""

    @property
    def records(self) -> int:
        return sum(self.class_counts)


def sorted_names(values: dict[Any, int]) -> tuple[list[str], list[int]]:
    """(names, counts) of raw label values in the in-memory label map's order (values equal as text merge)."""
    merged: dict[str, int] = {}
    for value in sorted(values, key=label_order):
        merged[str(value)] = merged.get(str(value), 0) + values[value]
    return list(merged), list(merged.values())


def describe_stream(cfg: Config) -> TrainStream:
    """The training stream's labels and sizes: from data.class_counts, or from a counting pass over the stream.

    The pass runs when labels are not given (or there are hierarchy levels to name), and over data.unlabelled
    only when phase dae has no dae.max_steps (its epoch length needs the number of records). Every rank counts
    its own share (reading, no tokenising); the result is kept in <run.dir>/stream_counts.json for re-runs.
    """
    d = cfg.data
    need_train = d.class_counts is None or bool(d.hierarchy_fields)
    need_unlabelled = "dae" in cfg.phases() and cfg.dae.max_steps is None and bool(d.unlabelled)
    counted = _counts(cfg, need_train, need_unlabelled)
    if need_train:
        levels = [names for names, _ in counted["train"]]
        counts = counted["train"][0][1]
        if d.class_counts is not None:
            log.warning("data.class_counts is not used with data.hierarchy_fields: the stream was counted")
    else:
        names, counts = sorted_names(d.class_counts)
        levels = [names]
    stream = TrainStream(d.train, list(d.unlabelled), levels, counts, counted.get("unlabelled"))
    if dist.is_main():
        log.info(
            "train stream %s: %s records in %d classes%s",
            d.train,
            f"{stream.records:,}",
            len(levels[0]),
            f", unlabelled: {stream.unlabelled_records:,} records" if stream.unlabelled_records is not None else "",
        )
    return stream


def _counts(cfg: Config, need_train: bool, need_unlabelled: bool) -> dict:
    """{"train": [(names, counts) per level], "unlabelled": records}, as needed: from the run's file or counted."""
    if not (need_train or need_unlabelled):
        return {}
    path = RunDir(cfg.run.dir).stream_counts_file  # the counting pass's result, for a re-run over the same files
    # rank 0 decides, so that every rank takes part in the same collectives
    key = dist.broadcast_object(_fingerprint(cfg) if dist.is_main() else None)
    cached = dist.broadcast_object(_read_counts(path, key) if dist.is_main() else None)
    out = dict(cached or {})
    d = cfg.data
    if need_train and "train" not in out:
        fields = [d.label_field, *d.hierarchy_fields]

        def count_train() -> list[Counter]:
            local = [Counter() for _ in fields]
            for _, labels in read_share(cfg, d.train, "train", fields):
                for level, value in enumerate(labels):
                    local[level][value] += 1
            return local

        per_rank = _on_every_rank(count_train)
        totals = [sum((ranks[level] for ranks in per_rank), Counter()) for level in range(len(fields))]
        if not totals[0]:
            raise DataError(f"train split {d.train}: no rows with text: check the files and data.text_field")
        for field, counter in zip(fields, totals):
            _one_kind(d.train, field, counter)
        out["train"] = [sorted_names(counter) for counter in totals]
    if need_unlabelled and "unlabelled" not in out:
        per_rank = _on_every_rank(lambda: sum(1 for s in d.unlabelled for _ in read_share(cfg, s, "unlabelled", [])))
        out["unlabelled"] = sum(per_rank)
    if dist.is_main() and out != cached and path.parent.is_dir():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, **out}, indent=1))
        os.replace(tmp, path)
    return out


def _one_kind(source: str, field: str, counts: Counter) -> None:
    """The labels of a field in the stream are all strings or all whole numbers (sources.LabelKinds: each rank
    checked its own share record by record; this is the check across ranks)."""
    strings = [v for v in counts if isinstance(v, str)]
    numbers = [v for v in counts if not isinstance(v, str)]
    if strings and numbers:
        raise DataError(
            f"train split {source}: the labels of '{field}' mix whole numbers ({numbers[0]!r}) and strings"
            f' ({strings[0]!r}): 1 and "1" would be two classes with one name: write them one way'
        )


def _on_every_rank(count: Callable[[], Any]) -> list[Any]:
    """count() on every rank, gathered in rank order; a DataError on any rank is raised on all (none waits)."""
    try:
        result, error = count(), None
    except DataError as e:
        result, error = None, str(e)
    gathered = dist.all_gather_object((result, error))
    errors = [e for _, e in gathered if e is not None]
    if errors:
        raise DataError(errors[0])
    return [r for r, _ in gathered]


def _fingerprint(cfg: Config) -> dict:
    """What the counts depend on: the sources (local files with their sizes and times), fields and empty-text rule."""
    d = cfg.data

    def files(source: str) -> Any:
        if not looks_like_path(source):
            return source  # a hub dataset: its name (a new revision under the same name is not noticed)
        return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in expand_paths(source)]

    return json.loads(
        json.dumps(
            {
                "train": files(d.train),
                "unlabelled": [files(s) for s in d.unlabelled],
                "fields": [d.text_field, d.label_field, *d.hierarchy_fields],
                "empty_text": d.empty_text,
            }
        )
    )


def _read_counts(path: Path, key: dict) -> dict | None:
    """The saved counts, or None when there are none for these sources, or the file is damaged (a cache: the
    stream is counted again, and the file written whole again)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.pop("key", None) != key:
        return None
    if "train" in saved:
        try:
            saved["train"] = [(list(names), list(counts)) for names, counts in saved["train"]]
        except (TypeError, ValueError):
            log.warning("%s is damaged (its train counts cannot be read): counting the stream again", path)
            return None
    return saved
