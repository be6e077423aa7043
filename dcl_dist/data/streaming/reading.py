"""Opening a streamed source and reading this rank's share of it: Hugging Face datasets streaming over local
files or hub datasets, rows -> (text, labels), and reading errors that name the file and line or the record."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dcl_dist import dist
from dcl_dist.config import Config
from dcl_dist.data.sources import (
    class_label_names,
    expand_paths,
    file_format,
    looks_like_path,
    name_class_labels,
    parse_hub_name,
    text_and_labels,
)
from dcl_dist.errors import DataError

# datasets' builders log a read error themselves before raising it; it reaches the user once, as our DataError
# with the file and line
logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)

BUILDERS = {"jsonl": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet", "txt": "text"}
"""The Hugging Face packaged builder that streams each local file type."""

READ_SIZES = {"json": {"chunksize": 1 << 20}, "text": {"chunksize": 1 << 20}, "parquet": {"batch_size": 1024}}
"""How much the builders parse at a time. Their defaults (10 MB of JSON or text, a whole parquet row group) put
80 MB more in a rank's peak memory over a 1M-line corpus than over a 10k-line one (measured); 1 MB reads at the
same speed."""


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

    def __init__(self, cfg: Config, source: str, label_fields: list[str], column_class_names: dict[str, list[str]]):
        self.source, self.label_fields, self.column_class_names = source, label_fields, column_class_names
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
        row = name_class_labels(row, self.column_class_names)
        return text_and_labels(self.where(record), row, self.text_field, self.label_fields, self.empty_text, "train")


def read_share(cfg: Config, source: str, role: str, label_fields: list[str]) -> Iterator[tuple[str, tuple]]:
    """(text, raw labels) of every non-empty record of this rank's share of a source, in stream order."""
    dataset = open_source(source, role)
    reader = RecordReader(cfg, source, label_fields, class_label_names(dataset))
    for record, row in enumerate(share_rows(rank_share(dataset, dist.rank(), dist.world_size()), reader), start=1):
        parsed = reader(row, record)
        if parsed is not None:
            yield parsed


def share_rows(share: Any, reader: RecordReader, record: int = 0) -> Iterator[dict]:
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
