"""The demo dataset: its generator writes the shipped files byte for byte, and the package's copy is the example's."""

from __future__ import annotations

import sys
from pathlib import Path

from dcl_dist.demo_data import FILES, copy_demo_data, demo_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "demo"


def test_the_package_ships_the_example_files():
    for name in FILES:
        assert demo_file(name).read_bytes() == (EXAMPLE / name).read_bytes(), name


def test_the_generator_writes_the_shipped_files(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "make_demo", raising=False)
    import make_demo

    assert make_demo.write_demo_dataset(tmp_path) == {"train": 668, "test": 240}
    for name in FILES:
        assert (tmp_path / name).read_bytes() == demo_file(name).read_bytes(), name


def test_copy_demo_data_writes_every_file(tmp_path):
    written = copy_demo_data(tmp_path / "data")
    assert [p.name for p in written] == list(FILES)
    assert all(p.read_bytes() == demo_file(p.name).read_bytes() for p in written)
