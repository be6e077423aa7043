"""Bad input, table-driven: every case ends in one clear message (what, where, the fix) and exit code 2,
never a traceback. The messages are the ones docs/TROUBLESHOOTING.md shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcl_dist import cli

pytestmark = pytest.mark.integration


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def rows(n: int, labels=("a", "b")) -> list[dict]:
    return [{"text": f"some text number {i}", "label": labels[i % len(labels)]} for i in range(n)]


def data(tmp: Path, name: str, content: str | bytes, split: str = "train") -> str:
    """A data file in tmp, as the override that points data.<split> at it."""
    return f"data.{split}={write(tmp / name, content)}"


def train_args(tmp: Path, model: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        "configs/quickstart.yaml",
        f"run.dir={tmp / 'run'}",
        f"model.name_or_path={model}",
        "logging.progress_bar=false",
        "data.test=null",
        *extra,
    ]


# (case, setup(tmp, model) -> argv, expected message fragments)
CASES = {
    "unknown key": (lambda t, m: train_args(t, m, "cl.imbalanse=paper"), ["did you mean 'cl.imbalance'"]),
    "wrong type": (lambda t, m: train_args(t, m, "ft.patience=three"), ["'ft.patience' must be int, got 'three'"]),
    "deletion ratio out of range": (
        lambda t, m: train_args(t, m, "dae.deletion_ratio=1.0"),
        ["'dae.deletion_ratio' is 1.0: it must be in [0, 1)"],
    ),
    "min ratio above max ratio": (
        lambda t, m: train_args(t, m, "cl.min_ratio=5"),
        ["'cl.min_ratio' (5.0) is above cl.max_ratio (4.0)"],
    ),
    "negative learning rate": (lambda t, m: train_args(t, m, "ft.lr=-1e-5"), ["'ft.lr' is -1e-05"]),
    "invalid zero stage": (lambda t, m: train_args(t, m, "deepspeed.zero_stage=4"), ["use 0, 1, 2 or 3"]),
    "missing data file": (
        lambda t, m: train_args(t, m, "data.train=nope/train.jsonl"),
        ["'data.train' nope/train.jsonl does not exist"],
    ),
    "missing model folder": (
        lambda t, m: train_args(t, m, "model.name_or_path=./no-such-model"),
        ["'model.name_or_path' ./no-such-model is not a folder"],
    ),
    "phase without its input": (
        lambda t, m: [*train_args(t, m), "--phase", "ft"],
        ["--phase ft needs the artifacts of dae, cl", "run --phase dae first"],
    ),
    "empty train file": (lambda t, m: train_args(t, m, data(t, "e.jsonl", "")), ["train split", "no rows"]),
    "missing text field": (
        lambda t, m: train_args(t, m, data(t, "f.jsonl", jsonl([{"sentence": "x", "label": "a"}]))),
        ["no field 'text' (fields found: sentence, label): set data.text_field"],
    ),
    "empty text refused": (
        lambda t, m: train_args(
            t, m, "data.empty_text=error", data(t, "g.jsonl", jsonl(rows(4) + [{"text": " ", "label": "a"}]))
        ),
        ["g.jsonl:5: empty text"],
    ),
    "unseen test label": (
        lambda t, m: train_args(
            t, m, data(t, "h.jsonl", jsonl(rows(10))), data(t, "i.jsonl", jsonl(rows(3, ("a", "zz"))), "test")
        ),
        ["labels that train never has: 'zz' (1)"],
    ),
    "single class": (lambda t, m: train_args(t, m, data(t, "j.jsonl", jsonl(rows(10, ("a",))))), ["single class (a)"]),
    "non-UTF-8 bytes": (
        lambda t, m: train_args(t, m, data(t, "k.jsonl", b'{"text": "caf\xe9", "label": "a"}\n')),
        ["k.jsonl:1: bytes that are not UTF-8"],
    ),
    "malformed JSON": (
        lambda t, m: train_args(t, m, data(t, "l.jsonl", jsonl(rows(2)) + "{oops\n")),
        ["l.jsonl:3: not valid JSON"],
    ),
    "malformed CSV": (
        lambda t, m: train_args(t, m, data(t, "m.csv", "text,label\nok,a\nx,y,z\n")),
        ["m.csv:3: 3 columns where the header has 2"],
    ),
    "predict: not a model folder": (
        lambda t, m: ["predict", "--model", str(t), "--input", "x.jsonl"],
        ["no dcl_dist.json"],
    ),
    "predict: model folder with missing files": (
        lambda t, m: ["predict", "--model", str(t / "none"), "--input", "x"],
        ["no such model folder"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_message(case, tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    make_argv, expected = CASES[case]
    code = cli.main(make_argv(tmp_path, tiny_model))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("dcl-dist: error:")
    for fragment in expected:
        assert fragment in err, f"{case}: {fragment!r} not in {err!r}"
