"""dcl-dist init: the starter config loads as it is (with the demo data beside it), holds the quickstart's values,
says what each key means, and nothing is overwritten."""

from __future__ import annotations

import re

import pytest
import yaml

from dcl_dist import cli
from dcl_dist.config import load_config, schema_keys
from dcl_dist.demo_data import FILES
from dcl_dist.errors import DataError
from dcl_dist.starter import STARTER, init_project, starter_config
from helpers import REPO


def test_init_writes_a_config_that_runs_from_its_folder(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "project"
    assert cli.main(["init", str(folder), "--demo-data"]) == 0
    assert sorted(p.name for p in (folder / "data").iterdir()) == sorted(FILES)
    assert f"next: cd {folder} && dcl-dist train --config config.yaml" in capsys.readouterr().out
    monkeypatch.chdir(folder)
    cfg = load_config("config.yaml")  # with the pre-flight: the data files and the packaged model are found
    assert cfg.data.train == "data/train.jsonl" and cfg.phases() == ("dae", "cl", "ft")


def test_the_starter_holds_the_quickstarts_values(monkeypatch):
    monkeypatch.chdir(REPO)
    quickstart = load_config("configs/quickstart.yaml", preflight=False)
    for section, values in STARTER.items():
        for key, value in values.items():
            if f"{section}.{key}" in ("data.train", "data.test"):
                continue
            assert getattr(getattr(quickstart, section), key) == value, f"{section}.{key}"


def test_every_key_has_its_schema_doc_above_it():
    text = starter_config(with_demo_data=True)
    assert yaml.safe_load(text) == STARTER
    docs = {key: doc for key, (_, _, doc) in schema_keys().items()}
    lines = text.splitlines()
    section, checked = None, 0
    for previous, line in zip(lines, lines[1:]):
        if re.fullmatch(r"\w+:", line):
            section = line[:-1]
        elif key := re.match(r"  (\w+): ", line):
            assert previous == f"  # {docs[f'{section}.{key[1]}']}", line
            checked += 1
    assert checked == sum(len(values) for values in STARTER.values())


def test_init_refuses_to_overwrite(tmp_path):
    init_project(tmp_path, with_demo_data=False)
    assert not (tmp_path / "data").exists()
    with pytest.raises(DataError, match="config.yaml exists already"):
        init_project(tmp_path, with_demo_data=True)
