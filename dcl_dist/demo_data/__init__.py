"""The demo dataset of the quickstart (6 bank-support intents, 17:1 imbalanced; see examples/demo/README.md),
shipped in the package so that an installed dcl-dist can write it out without a clone of the repository.

examples/demo/make_demo.py writes these files and their twins in examples/demo.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
FILES = ("train.jsonl", "test.jsonl", "labels.json")
"""The shipped files: the train and test splits, and the sorted class names."""


def demo_file(name: str) -> Path:
    """The path of one shipped demo file."""
    if name not in FILES:
        raise ValueError(f"{name}: the demo data holds {', '.join(FILES)}")
    return FOLDER / name


def copy_demo_data(folder: Path) -> list[Path]:
    """Write the demo files into folder (made if missing); their paths, in the order of FILES."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copyfile(demo_file(name), folder / name)) for name in FILES]
