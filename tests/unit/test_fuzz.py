"""Fuzzing the config and data loaders: whatever a user writes ends in a result or in one clear error
(ConfigError / DataError naming where), never in another exception."""

from __future__ import annotations

import json
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcl_dist.config import load_config, schema_keys
from dcl_dist.data.splits import read_rows
from dcl_dist.errors import ConfigError, DataError

KEYS = list(schema_keys())
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=5), max_size=3),
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SAFE_KEYS = [k for k in KEYS if not k.startswith(("model.name_or_path", "data.", "deepspeed.config_file"))]
TRAIN = "data.train=any/hub_dataset"  # a hub name: the pre-flight step leaves it to the reader


@FUZZ
@given(st.dictionaries(st.sampled_from(SAFE_KEYS + ["cl.lrr", "nope.key", "dae"]), SCALARS, max_size=6))
def test_config_overrides_end_in_a_config_or_a_config_error(tmp_path_factory, values):
    overrides = [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in values.items()
    ]
    try:
        cfg = load_config(None, [TRAIN, *overrides])
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and "'" in p for p in e.problems)
    else:
        assert cfg.phases()


@FUZZ
@given(st.text(alphabet=string.printable + "é\u00e9\u2028:{}[]-", max_size=300))
def test_arbitrary_yaml_files_end_in_a_config_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, [TRAIN])
    except ConfigError as e:
        assert e.problems


ROW = st.one_of(
    st.fixed_dictionaries(
        {
            "text": st.one_of(st.text(max_size=20), st.integers(), st.none()),
            "label": st.one_of(st.sampled_from(["a", "b"]), st.integers(0, 3), st.none()),
        }
    ),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
LINE = st.one_of(ROW.map(json.dumps), st.text(max_size=30), st.binary(max_size=30).map(lambda b: b.decode("latin1")))


@FUZZ
@given(st.lists(LINE, max_size=12), st.sampled_from(["jsonl", "csv"]), st.booleans())
def test_any_file_reads_or_fails_with_a_data_error_naming_the_file(tmp_path_factory, lines, kind, latin1):
    path = tmp_path_factory.mktemp("data") / f"train.{kind}"
    body = "\n".join(lines) + "\n"
    if kind == "csv":
        body = "text,label\n" + body
    path.write_bytes(body.encode("latin1" if latin1 else "utf-8", errors="replace"))
    try:
        texts, labels, skipped = read_rows(str(path), "train", "text", ["label"], "skip")
    except DataError as e:
        assert str(Path(path)) in str(e) or "train split" in str(e)
    else:
        assert texts and len(texts) == len(labels) and all(t.strip() for t in texts)
