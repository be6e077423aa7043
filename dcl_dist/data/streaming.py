"""Training data as a stream: Hugging Face datasets streaming over local files or hub datasets, sharded by rank,
through a seeded shuffle buffer whose whole state is ours, so that a checkpoint taken after any micro-batch
resumes with exactly the micro-batches the uninterrupted run would have seen, without replaying the stream
(Hugging Face re-reads only the current file up to the position).

Per rank, a stream is an endless sequence of passes over the rank's share of its sources (train, then each of
data.unlabelled in phase dae). A pass reads every record once (phases cl and joint emit the imbalance
correction's copies of each), mixes them through a buffer of data.shuffle_buffer_size examples and drains the
buffer at the pass's end. The buffer's random draws are keyed on (seed, rank, pass, draw number), so its state
is its content and a counter. The loop's epochs are windows of steps_per_epoch steps over that sequence.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dcl_dist import dist
from dcl_dist.config import Config
from dcl_dist.data.balance import make_pairs, stream_copies
from dcl_dist.data.batch_plan import BatchPlan
from dcl_dist.data.batching import (
    Example,
    Items,
    Noise,
    Tokenize,
    cl_batch,
    dae_batch,
    ft_batch,
    pair_batch,
)
from dcl_dist.data.noise import keyed_int, keyed_rng, keyed_uniform, text_id
from dcl_dist.data.sources import (
    class_label_names,
    expand_paths,
    file_format,
    label_order,
    looks_like_path,
    name_class_labels,
    parse_hub_name,
    text_and_labels,
)
from dcl_dist.errors import DataError

log = logging.getLogger(__name__)
# datasets' builders log a read error themselves before raising it; it reaches the user once, as our DataError
# with the file and line
logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)

STREAM_BUFFER = 3
STREAM_COPIES = 4
STREAM_PAIRS = 5
"""keyed_int namespaces of the buffer's draws, the correction's copies and pair mode's pairing (noise uses 1, 2)."""

BUILDERS = {"jsonl": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet", "txt": "text"}
"""The Hugging Face packaged builder that streams each local file type."""

READ_SIZES = {"json": {"chunksize": 1 << 20}, "text": {"chunksize": 1 << 20}, "parquet": {"batch_size": 1024}}
"""How much the builders parse at a time. Their defaults (10 MB of JSON or text, a whole parquet row group) put
80 MB more in a rank's peak memory over a 1M-line corpus than over a 10k-line one (measured); 1 MB reads at the
same speed."""

STATE_VERSION = 1
"""Bumped when the layout of a stream's checkpointed state changes."""


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


# ---------------------------------------------------------------------------------------------------------------------
# Sources


def open_source(source: str, role: str) -> Any:
    """A whole source (a file, a glob of one file type, or a hub name[:config][@split]) as a streaming dataset."""
    import datasets

    try:
        if looks_like_path(source):
            paths = expand_paths(source)
            formats = {file_format(p) for p in paths}
            if len(formats) > 1:
                raise DataError(
                    f"{source}: mixes file types ({', '.join(sorted(formats))}): stream one type per source"
                )
            fmt = formats.pop()
            builder = BUILDERS[fmt]
            extra = {"sep": "\t"} if fmt == "tsv" else READ_SIZES.get(builder, {})
            files = [str(p) for p in paths]
            return datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **extra)
        name, config, split = parse_hub_name(source, role)
        return datasets.load_dataset(name, config, split=split, streaming=True)
    except DataError:
        raise
    except Exception as e:  # the hub client and the builders raise many types
        raise DataError(
            f"{role} source {source}: cannot open it as a stream ({type(e).__name__}: {e}). Check the path, or the"
            " hub name, the config after ':' and the split after '@'"
        ) from None


def rank_share(dataset: Any, rank: int, world: int) -> Any:
    """This rank's disjoint share: whole shards (files) when their number is a multiple of world, else every
    world-th record (each rank then reads the whole source and keeps its own).

    Always a new dataset object (also at world size 1): a restored state sticks to the object it is loaded into.
    """
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(dataset, rank=rank, world_size=world)


class RecordReader:
    """Rows of one source -> (text, raw labels), with errors that name the source, the rank and the record."""

    def __init__(self, cfg: Config, source: str, label_fields: list[str], class_names: dict[str, list[str]]):
        self.source, self.label_fields, self.class_names = source, label_fields, class_names
        txt = looks_like_path(source) and all(file_format(p) == "txt" for p in expand_paths(source))
        self.text_field = "text" if txt else cfg.data.text_field
        self.empty_text = cfg.data.empty_text
        self.rank = dist.rank()

    def where(self, record: int, text: str | None = None) -> str:
        """The source, the record's number in this rank's share and the start of its text (to grep for)."""
        shown = f", text {text[:60]!r}" if text is not None else ""
        return f"{self.source} (record {record} of rank {self.rank}'s share{shown})"

    def __call__(self, row: dict, record: int) -> tuple[str, tuple] | None:
        """(text, raw labels per level) of a row, or None for an empty text that is skipped."""
        row = name_class_labels(row, self.class_names)
        return text_and_labels(self.where(record), row, self.text_field, self.label_fields, self.empty_text, "train")


def read_share(cfg: Config, source: str, role: str, label_fields: list[str]) -> Iterator[tuple[str, tuple]]:
    """(text, raw labels) of every non-empty record of this rank's share of a source, in stream order."""
    dataset = open_source(source, role)
    reader = RecordReader(cfg, source, label_fields, class_label_names(dataset))
    for record, row in enumerate(_rows(rank_share(dataset, dist.rank(), dist.world_size()), reader), start=1):
        parsed = reader(row, record)
        if parsed is not None:
            yield parsed


def _rows(share: Any, reader: RecordReader, record: int = 0) -> Iterator[dict]:
    """The rows of a share (`record` of them read before), with reading errors (bad JSON, a damaged parquet file)
    as one DataError."""
    it = iter(share)
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as e:  # pyarrow and the builders raise many types for a bad file
            bad_line = first_bad_json_line(reader.source)
            if bad_line is not None:
                raise DataError(f"{bad_line}: not valid JSON: fix or remove the line") from None
            # the builders parse a chunk ahead, so the bad record is at or after this point, not necessarily here
            raise DataError(
                f"{reader.source} (rank {reader.rank}'s share, after record {record}): cannot read it"
                f" ({type(e).__name__}: {e}): fix or remove the bad record"
            ) from None
        record += 1
        yield row


def first_bad_json_line(source: str) -> str | None:
    """`file:line` of the first line that is not JSON in a local .jsonl source (a file or a glob), or None.

    Only on the error path: Arrow's message counts rows within the chunk it parsed, not lines of the file.
    """
    if not looks_like_path(source):
        return None
    pattern = Path(source)
    files = sorted(pattern.parent.glob(pattern.name)) if any(c in source for c in "*?[") else [pattern]
    for path in files:
        if path.suffix != ".jsonl" or not path.is_file():
            continue
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except ValueError:
                    return f"{path}:{number}"
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The counting pass


def sorted_names(values: dict[Any, int]) -> tuple[list[str], list[int]]:
    """(names, counts) of raw label values in the in-memory label map's order (values equal as text merge)."""
    merged: dict[str, int] = {}
    for value in sorted(values, key=label_order):
        merged[str(value)] = merged.get(str(value), 0) + values[value]
    return list(merged), list(merged.values())


COUNTS_FILE = "stream_counts.json"
"""In the run directory: the counting pass's result, reused by a re-run over the same files."""


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
    path = Path(cfg.run.dir) / COUNTS_FILE
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
        out["train"] = [sorted_names(counter) for counter in totals]
    if need_unlabelled and "unlabelled" not in out:
        per_rank = _on_every_rank(lambda: sum(1 for s in d.unlabelled for _ in read_share(cfg, s, "unlabelled", [])))
        out["unlabelled"] = sum(per_rank)
    if dist.is_main() and out != cached and path.parent.is_dir():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, **out}, indent=1))
        os.replace(tmp, path)
    return out


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
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.pop("key", None) != key:
        return None
    if "train" in saved:
        saved["train"] = [(list(names), list(counts)) for names, counts in saved["train"]]
    return saved


# ---------------------------------------------------------------------------------------------------------------------
# One rank's stream


@dataclass
class StreamState:
    """Where a rank's stream stands between two micro-batches: everything needed to go on from there exactly."""

    passes: int = 0
    """Completed passes (the current pass's number: the epoch of its noise and copies)."""
    source: int = 0
    """Which of the pass's sources is being read."""
    hf: dict | None = None
    """The Hugging Face iterator's state within that source (None: at its start)."""
    records: int = 0
    """Records read from that source in this pass."""
    draws: int = 0
    """Draws from the buffer in this pass (its random numbers are keyed on this counter)."""
    buffer: list[Example] = field(default_factory=list)
    incoming: list[Example] = field(default_factory=list)
    """Copies of the last record read that are not in the buffer yet."""
    groups: dict[int, list[Example]] = field(default_factory=dict)
    """class_aware batching: the open same-class group of each class."""
    ready: list[Example] = field(default_factory=list)
    """class_aware batching: examples of completed groups, waiting for a micro-batch."""
    micro_batches: int = 0
    """Micro-batches produced so far (the loop's position: (epoch x steps_per_epoch + step) x accumulation)."""


class RankStream:
    """This rank's endless sequence of micro-batches of Examples over its share of the sources."""

    def __init__(
        self,
        cfg: Config,
        sources: list[str],
        label_fields: list[str],
        label_names: list[list[str]],
        micro: int,
        ratios: list[float] | None = None,
        group: int | None = None,
        datasets: dict[str, Any] | None = None,
    ):
        """ratios: per-class oversampling of the correction (None: none); group: class_aware group size."""
        self.cfg, self.sources, self.label_fields, self.micro = cfg, sources, label_fields, micro
        self.ratios, self.group = ratios, group
        self.index = [{name: i for i, name in enumerate(level)} for level in label_names]
        self.label_names = label_names
        self.seed, self.rank, self.world = cfg.run.seed, dist.rank(), dist.world_size()
        self.buffer_size = cfg.data.shuffle_buffer_size
        self.datasets = datasets if datasets is not None else {}
        """Opened sources, shared between the streams of a phase (opening one costs a second or two)."""
        self.state = StreamState()
        self._share: Any = None
        self._rows: Iterator[dict] | None = None
        self._reader: RecordReader | None = None

    # -- reading ------------------------------------------------------------------------------------------------

    def _open(self) -> None:
        st, source = self.state, self.sources[self.state.source]
        role = "train" if st.source == 0 else "unlabelled"
        if source not in self.datasets:
            self.datasets[source] = open_source(source, role)
        dataset = self.datasets[source]
        labels = self.label_fields if st.source == 0 else []
        self._reader = RecordReader(self.cfg, source, labels, class_label_names(dataset))
        self._share = rank_share(dataset, self.rank, self.world)
        if st.hf is not None:
            self._share.load_state_dict(st.hf)
        self._rows = _rows(self._share, self._reader, st.records)

    def _read(self) -> list[Example] | None:
        """The next record's examples (its copies, in phases that correct the imbalance); None once the pass is read."""
        st = self.state
        while st.source < len(self.sources):
            if self._rows is None:
                self._open()
            row = next(self._rows, None)
            if row is None:
                st.source, st.hf, st.records, self._rows = st.source + 1, None, 0, None
                continue
            st.records += 1
            parsed = self._reader(row, st.records)
            if parsed is not None:
                return self._examples(*parsed)
        return None

    def _examples(self, text: str, raw: tuple) -> list[Example]:
        st = self.state
        sample = text_id(text)
        if not raw:
            return [Example(text, None, sample, 0, st.passes)]
        levels = []
        for level, value in enumerate(raw):
            i = self.index[level].get(str(value))
            if i is None:
                known = self.label_names[level]
                raise DataError(
                    f"{self._reader.where(st.records, text)}: label {value!r} is not one of the {len(known)}"
                    f" classes ({', '.join(known[:20])}) that data.class_counts or the counting pass gave: add it to"
                    " data.class_counts (or remove data.class_counts to count the stream), or fix the record"
                )
            levels.append(i)
        levels = tuple(levels)
        copies = 1
        if self.ratios is not None:
            copies = stream_copies(self.ratios[levels[0]], keyed_uniform(self.seed, STREAM_COPIES, sample, st.passes))
        return [Example(text, levels, sample, c, st.passes) for c in range(copies)]

    # -- shuffling, grouping, cutting ----------------------------------------------------------------------------

    def _draw(self, n: int) -> int:
        st = self.state
        st.draws += 1
        return keyed_int(self.seed, STREAM_BUFFER, self.rank, st.passes, st.draws) % n

    def _next_shuffled(self) -> Example:
        st = self.state
        while True:
            if st.incoming:
                example = st.incoming.pop(0)
                if len(st.buffer) < self.buffer_size:
                    st.buffer.append(example)
                    continue
                i = self._draw(len(st.buffer))
                out, st.buffer[i] = st.buffer[i], example
                return out
            examples = self._read()
            if examples is not None:
                st.incoming = examples
                continue
            if st.buffer:  # the pass is read: drain the buffer
                i = self._draw(len(st.buffer))
                st.buffer[i], st.buffer[-1] = st.buffer[-1], st.buffer[i]
                return st.buffer.pop()
            if st.draws == 0:
                raise DataError(
                    f"rank {self.rank}'s share of {', '.join(self.sources)} holds no records: give the stream at least"
                    f" as many non-empty records (or files) as there are ranks ({self.world})"
                )
            st.passes, st.source, st.draws = st.passes + 1, 0, 0

    def _next_example(self) -> Example:
        if self.group is None:
            return self._next_shuffled()
        st = self.state
        while not st.ready:
            example = self._next_shuffled()
            members = st.groups.setdefault(example.levels[0], [])
            members.append(example)
            if len(members) == self.group:
                st.ready = members
                del st.groups[example.levels[0]]
        return st.ready.pop(0)

    def next_micro_batch(self) -> tuple[int, list[Example]]:
        """(its number, its examples): the next micro-batch of this rank."""
        examples = [self._next_example() for _ in range(self.micro)]
        self.state.micro_batches += 1
        return self.state.micro_batches - 1, examples

    # -- state ---------------------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The state after the last micro-batch, as plain data (a few list copies: cheap at every micro-batch)."""
        st = self.state
        return {
            "version": STATE_VERSION,
            "rank": self.rank,
            "world": self.world,
            "passes": st.passes,
            "source": st.source,
            "hf": self._share.state_dict() if self._rows is not None else st.hf,
            "records": st.records,
            "draws": st.draws,
            "buffer": list(st.buffer),
            "incoming": list(st.incoming),
            "groups": {k: list(v) for k, v in st.groups.items()},
            "ready": list(st.ready),
            "micro_batches": st.micro_batches,
        }

    def restore(self, saved: dict) -> None:
        """Go on from a snapshot (of this rank, at this world size)."""
        if saved.get("version") != STATE_VERSION or (saved["rank"], saved["world"]) != (self.rank, self.world):
            raise ValueError(
                f"stream state of rank {saved.get('rank')} / {saved.get('world')} ranks, version"
                f" {saved.get('version')}: not this rank's"
            )
        self.state = StreamState(
            passes=saved["passes"],
            source=saved["source"],
            hf=saved["hf"],
            records=saved["records"],
            draws=saved["draws"],
            buffer=list(saved["buffer"]),
            incoming=list(saved["incoming"]),
            groups={k: list(v) for k, v in saved["groups"].items()},
            ready=list(saved["ready"]),
            micro_batches=saved["micro_batches"],
        )
        self._rows = self._share = None


# ---------------------------------------------------------------------------------------------------------------------
# What a phase hands the loop


class StreamCollate:
    """(micro-batch number, Examples) -> tensors, for one kind of phase (picklable: it runs in DataLoader workers)."""

    def __init__(self, kind: str, tokenize: Tokenize, noise: Noise, pairs: bool, seed: int, rank: int):
        self.kind, self.tokenize, self.noise, self.pairs, self.seed, self.rank = (
            kind,
            tokenize,
            noise,
            pairs,
            seed,
            rank,
        )

    def __call__(self, payload: tuple[int, list[Example]]) -> dict[str, torch.Tensor]:
        number, examples = payload
        if self.kind == "dae":
            return dae_batch(self.tokenize, self.noise, examples)
        if self.kind == "ft":
            return ft_batch(self.tokenize, examples)
        with_dae = self.kind == "joint"
        if not self.pairs:
            return cl_batch(self.tokenize, self.noise, examples, with_dae)
        # pair mode pairs the micro-batch's examples (two shuffled copies of it, never an example with its copies)
        pairs = make_pairs([e.id for e in examples], keyed_rng(self.seed, STREAM_PAIRS, self.rank, number))
        first, second = [examples[a] for a, _ in pairs], [examples[b] for _, b in pairs]
        return pair_batch(self.tokenize, self.noise, first, second, with_dae)


class StreamFeed:
    """A phase's training batches from the stream: steps per epoch, and each epoch's micro-batches for the loop.

    kind is the phase: dae (train and data.unlabelled texts), ft (labelled), cl or joint (labelled, corrected
    for imbalance one example at a time, batched in_batch / class_aware / in pairs as cl.* says).
    """

    def __init__(
        self,
        cfg: Config,
        kind: str,
        stream: TrainStream,
        tokenize: Tokenize,
        plan: BatchPlan,
        num_workers: int,
        ratios: list[float] | None = None,
    ):
        self.cfg, self.kind, self.stream, self.plan, self.num_workers = cfg, kind, stream, plan, num_workers
        contrastive = kind in ("cl", "joint")
        self.ratios = ratios if contrastive else None
        self.sources = [stream.source, *stream.unlabelled] if kind == "dae" else [stream.source]
        self.label_fields = [] if kind == "dae" else [cfg.data.label_field, *cfg.data.hierarchy_fields]
        class_aware = contrastive and cfg.cl.mode == "in_batch" and cfg.cl.batching == "class_aware"
        self.group = cfg.cl.examples_per_class if class_aware else None
        pairs = contrastive and cfg.cl.mode == "pair"
        self.samples_per_item = 2 if pairs else 1
        noise = Noise(cfg.run.seed, cfg.dae.deletion_ratio, cfg.cl.copy_stopword_deletion, cfg.cl.copy_min_words)
        self.collate = StreamCollate(kind, tokenize, noise, pairs, cfg.run.seed, dist.rank())
        self.datasets: dict[str, Any] = {}
        self.items_per_pass = self._items_per_pass()
        p = getattr(cfg, kind)
        if self.items_per_pass is not None:
            self.steps_per_epoch = max(1, math.ceil(self.items_per_pass / plan.global_batch))
        elif p.max_steps is not None:
            self.steps_per_epoch = p.max_steps  # the length of the stream is unknown: one epoch of max_steps
        else:
            raise DataError(
                f"phase {kind}: the stream's length is unknown, so its learning-rate schedule has no end: set"
                f" {kind}.max_steps, or let the counting pass run (remove {kind}.max_steps and data.class_counts)"
            )

    def _items_per_pass(self) -> int | None:
        """Examples one pass over every rank's share yields (expected, with the correction's random copies)."""
        s = self.stream
        if self.kind == "dae":
            if s.unlabelled and s.unlabelled_records is None:
                return None
            return s.records + (s.unlabelled_records or 0)
        if self.ratios is not None:
            return round(sum(n * r for n, r in zip(s.class_counts, self.ratios)))
        return s.records

    def rank_stream(self) -> RankStream:
        return RankStream(
            self.cfg,
            self.sources,
            self.label_fields,
            self.stream.label_names,
            self.plan.micro,
            self.ratios,
            self.group,
            self.datasets,
        )

    def batches(self, epoch: int, start: int, data_state: dict | None = None) -> Iterator[dict]:
        """This rank's micro-batches of an epoch from step `start` on, each with the stream's state once consumed."""
        first = (epoch * self.steps_per_epoch + start) * self.plan.accumulation
        count = (self.steps_per_epoch - start) * self.plan.accumulation
        stream = self.rank_stream()
        if data_state is not None and data_state.get("micro_batches") == first:
            stream.restore(data_state)
        elif first > 0:
            # only when the checkpoint has no state for this rank (it was written by another world size)
            log.warning(
                "rank %d: no stream state for micro-batch %d (checkpoint from another world size?): reading the stream"
                " from its start up to there; the batches differ from the run that wrote the checkpoint",
                dist.rank(),
                first,
            )
            for _ in range(first):
                stream.next_micro_batch()
        return stream_loader(stream, count, self.collate, self.num_workers)


def stream_loader(stream: RankStream, count: int, collate: StreamCollate, num_workers: int) -> Iterator[dict]:
    """`count` collated micro-batches of a stream, each with its "data_state" (workers collate when num_workers > 0).

    The stream runs in this process (it is one sequence whose state must be exact); workers only add noise and
    tokenise. The states wait here, in order, and never travel to the workers.
    """

    def payloads() -> Iterator[tuple[int, list[Example]]]:
        for _ in range(count):
            payload = stream.next_micro_batch()
            states.append(stream.snapshot())
            yield payload

    states: collections.deque[dict] = collections.deque()
    if num_workers == 0:
        for payload in payloads():
            yield {**collate(payload), "data_state": states.popleft()}
        return
    loader = DataLoader(
        Items(),
        sampler=payloads(),
        batch_size=None,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
    for batch in loader:
        yield {**batch, "data_state": states.popleft()}
