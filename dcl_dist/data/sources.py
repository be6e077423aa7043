"""Reading splits: local jsonl / csv / tsv / parquet files (plain or .gz, or globs) and Hugging Face hub datasets.

Local files are read with our own readers, so that every bad line is reported with its file and line number.

Labels: a label is a string or a whole number (a float without a fraction, such as 1.0, is that whole number);
anything else (a fraction, true/false, a list, an object) is an error naming the file and line, and so is null
or an empty string. Within one source the labels of a field are all strings or all whole numbers (LabelKinds): a
file that mixes 1 and "1", or ids and names, would otherwise give two classes with one name, or twice the
classes. Across sources labels match by their text, as CSV holds text only: 1 in a jsonl file and "1" in a csv
file are the same class.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcl_dist.errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".gz", ".txt")
"""Endings that make a data source a local file rather than a hub dataset name."""


def looks_like_path(source: str) -> bool:
    """True for local files and globs (by ending or a leading ./ / ~), False for hub dataset names."""
    return (
        source.startswith((".", "/", "~")) or any(c in source for c in "*?[") or source.lower().endswith(FILE_SUFFIXES)
    )


@dataclass
class Record:
    """One row: where it came from (for messages) and its fields."""

    where: str
    fields: dict[str, Any]


@dataclass
class SkipCounts:
    """Rows left out while reading a split, by reason (reported in the log)."""

    empty_text: int = 0
    examples: list[str] = field(default_factory=list)


def expand_paths(source: str) -> list[Path]:
    """The files a local source names (a glob is sorted); a DataError if there are none."""
    pattern = os.path.expanduser(source)
    paths = sorted(Path(p) for p in glob.glob(pattern)) if any(c in pattern for c in "*?[") else [Path(pattern)]
    missing = [p for p in paths if not p.is_file()]
    if missing and missing[0].is_dir():
        raise DataError(f"{missing[0]} is a folder: give a file, or a glob of its files such as {missing[0]}/*.jsonl")
    if not paths or missing:
        shown = missing[0] if missing else pattern
        raise DataError(f"{shown}: no such file (looked from {os.getcwd()}): fix the path")
    return paths


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def file_format(path: Path) -> str:
    """jsonl, csv, tsv, parquet or txt, from the file's ending (.gz ignored)."""
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in (
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".parquet", "parquet"),
        (".txt", "txt"),
    ):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"{path}: unknown file type: use .jsonl, .csv, .tsv, .parquet or .txt (optionally .gz)")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a text file, decoded line by line so that bad bytes are reported at their line."""
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{number}: bytes that are not UTF-8 ({e.reason} at column {e.start + 1}): re-encode the"
                    " file as UTF-8, e.g. iconv -f latin1 -t utf-8"
                ) from None


def read_jsonl(path: Path) -> Iterator[Record]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno}): fix or remove that line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f'{path}:{number}: each line must be a JSON object like {{"text": ..., "label": ...}}')
        yield Record(f"{path}:{number}", obj)


def read_txt(path: Path, text_field: str) -> Iterator[Record]:
    """Plain text, one example per line (unlabelled corpora and predict input)."""
    for number, line in _lines(path):
        if line.strip():
            yield Record(f"{path}:{number}", {text_field: line.rstrip("\r\n")})


def read_csv(path: Path, delimiter: str) -> Iterator[Record]:
    reader = csv.reader((line for _, line in _lines(path)), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: {len(row)} columns where the header has {len(header)}:"
                    " quote fields that contain the delimiter"
                )
            yield Record(f"{path}:{reader.line_num}", dict(zip(header, row)))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e}): fix the quoting on that line") from None


def read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{path}: cannot read as parquet ({e}): check that the file is complete") from None
    for i, row in enumerate(table.to_pylist()):
        yield Record(f"{path}:row {i}", row)


def read_file(path: Path, text_field: str = "text") -> Iterator[Record]:
    fmt = file_format(path)
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt in ("csv", "tsv"):
        return read_csv(path, "," if fmt == "csv" else "\t")
    if fmt == "txt":
        return read_txt(path, text_field)
    return read_parquet(path)


def parse_hub_name(source: str, default_split: str) -> tuple[str, str | None, str]:
    """'name[:config][@split]' -> (name, config, split)."""
    name, _, split = source.partition("@")
    name, _, config = name.partition(":")
    return name, config or None, split or default_split


def read_hub(source: str, default_split: str, streaming: bool = False) -> Iterator[Record]:
    import datasets

    name, config, split = parse_hub_name(source, default_split)
    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as e:  # the hub client raises many types: network, missing split, missing config
        if Path(name).expanduser().is_dir():
            raise DataError(
                f"{source} is a local folder, which the datasets library could not read as a dataset"
                f" ({type(e).__name__}: {e}): give a file, or a glob of its files such as {name}/*.jsonl"
            ) from None
        raise DataError(
            f"hub dataset '{source}' (split {split}): {type(e).__name__}: {e}. Check the name, the config after ':'"
            " and the split after '@'; offline, use a local file instead"
        ) from None
    column_class_names = class_label_names(dataset)
    for i, row in enumerate(dataset):
        yield Record(f"{name}@{split}:row {i}", name_class_labels(row, column_class_names))


def class_label_names(dataset: Any) -> dict[str, list[str]]:
    """The class names of a Hugging Face dataset's ClassLabel columns (they hold ids)."""
    import datasets

    return {k: f.names for k, f in (dataset.features or {}).items() if isinstance(f, datasets.ClassLabel)}


def name_class_labels(row: dict, column_class_names: dict[str, list[str]]) -> dict:
    """The row with ClassLabel ids replaced by their names, as a local file would give them (in place)."""
    for column, names in column_class_names.items():
        if isinstance(row.get(column), int) and 0 <= row[column] < len(names):
            row[column] = names[row[column]]
    return row


def label_order(value: Any) -> tuple[int, Any]:
    """Sort key of raw label values in the label map: integers numerically, everything else as text."""
    return (0, value) if isinstance(value, int) and not isinstance(value, bool) else (1, str(value))


def clean_label(where: str, field: str, value: Any) -> str | int:
    """A label as the label map takes it (a string, or an int), or a DataError naming `where` and the field."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    what = {bool: "true/false", list: "a list", dict: "an object", float: f"{value!r}, a fraction"}.get(
        type(value), f"{type(value).__name__} {value!r}"[:60]
    )
    raise DataError(
        f"{where}: label field '{field}' holds {what}: a label is a string or a whole number: fix the record"
    )


class LabelKinds:
    """The kind of label (string or whole number) each label field had first in one source; a record with the
    other kind is a DataError naming both places."""

    def __init__(self, fields: list[str]):
        self.fields = fields
        self.first: list[tuple[type, str, Any] | None] = [None] * len(fields)

    def observe(self, where: str | Callable[[], str], labels: tuple) -> None:
        """where: the record's place, or a function that says it (called only when needed)."""
        for level, value in enumerate(labels):
            kind = str if isinstance(value, str) else int
            first = self.first[level]
            if first is None:
                self.first[level] = (kind, where() if callable(where) else where, value)
            elif first[0] is not kind:
                here = where() if callable(where) else where
                raise DataError(
                    f"{here}: label {value!r} is a {_KIND[kind]}, but {first[1]} has {first[2]!r}, a"
                    f" {_KIND[first[0]]}: the labels of '{self.fields[level]}' in one source must be all strings or all"
                    ' whole numbers (1 and "1" would be two classes with one name): write them one way'
                )


_KIND = {str: "string", int: "whole number"}


def text_and_labels(
    where: str, fields: dict, text_field: str, label_fields: list[str], empty_text: str, role: str
) -> tuple[str, tuple[Any, ...]] | None:
    """(text, raw labels per level) of one record, or None for an empty text to skip; a DataError naming `where`."""
    missing = [f for f in [text_field, *label_fields] if f not in fields]
    if missing:
        found = ", ".join(map(str, fields)) or "none"
        key = "data.text_field" if missing[0] == text_field else "data.label_field / data.hierarchy_fields"
        raise DataError(f"{where}: no field '{missing[0]}' (fields found: {found}): set {key}")
    text = fields[text_field]
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise DataError(f"{where}: field '{text_field}' holds {type(text).__name__}, not text")
    if not text.strip():
        if empty_text == "error":
            raise DataError(
                f"{where}: empty text: remove the line, or set data.empty_text: skip to leave such rows out"
            )
        return None
    if any(fields[f] is None or (isinstance(fields[f], str) and not fields[f].strip()) for f in label_fields):
        raise DataError(f"{where}: empty label: give every {role} example a label")
    return text, tuple(clean_label(where, f, fields[f]) for f in label_fields)


def read_source(source: str, default_split: str, text_field: str = "text") -> Iterator[Record]:
    """Every record of a source: local files (by ending) or a hub dataset."""
    if looks_like_path(source):
        for path in expand_paths(source):
            yield from read_file(path, text_field)
    else:
        yield from read_hub(source, default_split)
