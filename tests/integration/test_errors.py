"""Bad input, table-driven: every case ends in one clear message (what, where, the fix) and exit code 2,
never a traceback. The messages are the ones docs/TROUBLESHOOTING.md shows."""

from __future__ import annotations

import json
import shutil
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
    "run directory not writable": (
        lambda t, m: train_args(t, m, f"run.dir={write(t / 'a-file', 'x')}/run"),
        ["'run.dir' ", "a-file/run cannot be written (Not a directory): choose a writable folder"],
    ),
    "global batch not divisible": (
        lambda t, m: train_args(t, m, "ft.global_batch_size=20", "ft.micro_batch_size_per_rank=8"),
        ["ft.global_batch_size", "20"],
    ),
    "streaming without a validation split": (
        lambda t, m: train_args(t, m, "data.streaming=true", "data.validation=null"),
        ["'data.validation' is needed with data.streaming"],
    ),
    "streamed file with a malformed line": (
        lambda t, m: train_args(
            t,
            m,
            "data.streaming=true",
            data(t, "s.jsonl", jsonl(rows(6)) + "{oops\n"),
            data(t, "v.jsonl", jsonl(rows(4)), "validation"),
        ),
        ["s.jsonl:7: not valid JSON"],
    ),
    "lora target that the model lacks": (
        lambda t, m: train_args(t, m, "lora.enabled=true", "lora.target_modules=[qkv_proj]"),
        ["'lora.target_modules'", "qkv_proj"],
    ),
    "predict: not a model folder": (
        lambda t, m: ["predict", "--model", str(t), "--input", str(write(t / "x.txt", "one line\n"))],
        ["no dcl_dist.json"],
    ),
    "predict: no such model folder": (
        lambda t, m: ["predict", "--model", str(t / "none"), "--input", str(write(t / "x.txt", "one line\n"))],
        ["no such model folder"],
    ),
}


def assert_one_clear_message(case: str, code: int, err: str, expected: list[str]) -> None:
    """Exit status 2 and one `dcl-dist: error:` message holding every expected fragment, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("dcl-dist: error:")
    for fragment in expected:
        assert fragment in err, f"{case}: {fragment!r} not in {err!r}"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_message(case, tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    make_argv, expected = CASES[case]
    code = cli.main(make_argv(tmp_path, tiny_model))
    assert_one_clear_message(case, code, capsys.readouterr().err, expected)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model) -> Path:
    """A run directory of variant ft whose ft artifact is written (a tiny encoder and head, untrained)."""
    from transformers import AutoTokenizer

    from dcl_dist.config import dump_yaml, load_config
    from dcl_dist.models.artifact import write_artifact
    from dcl_dist.models.encoder import SentenceEncoder, load_backbone
    from dcl_dist.models.head import ClassifierHead

    run = tmp_path_factory.mktemp("finished") / "run"
    (run / "ft").mkdir(parents=True)
    cfg = load_config(None, ["data.train=any/hub_dataset", "run.variant=ft", f"model.name_or_path={tiny_model}"])
    (run / "config.yaml").write_text(dump_yaml(cfg))
    encoder = SentenceEncoder(load_backbone(str(tiny_model)), "mean", 1)
    head = ClassifierHead(encoder.hidden_size, 16, 2)
    # as an older dcl_dist wrote it: the class names under "labels" (they still load)
    meta = {"phase": "ft", "variant": "ft", "labels": ["a", "b"], "lineage": [], "lora": None}
    write_artifact(run / "ft" / "artifact", encoder, AutoTokenizer.from_pretrained(str(tiny_model)), meta, 32, head)
    return run


def bare_folder(tmp: Path, name: str) -> str:
    """A folder in the current directory (tmp), given by its bare name, with a file datasets cannot read."""
    (tmp / name).mkdir()
    write(tmp / name / "notes.bin", b"\x00\x01")
    return name


def without(run: Path, tmp: Path, name: str) -> Path:
    """A copy of the run's ft artifact with one file removed."""
    copy = tmp / "copied"
    shutil.copytree(run / "ft" / "artifact", copy)
    (copy / name).unlink()
    return copy


# (case, setup(tmp, finished run) -> argv, expected message fragments): predict, evaluate and export
ARTIFACT_CASES = {
    "predict: malformed input file": (
        lambda t, r: ["predict", "--model", str(r / "ft" / "artifact"), "--input", write(t / "in.jsonl", "{no\n")],
        ["in.jsonl:1: not valid JSON"],
    ),
    "predict: input file missing": (
        lambda t, r: ["predict", "--model", str(r / "ft" / "artifact"), "--input", str(t / "absent.jsonl")],
        ["absent.jsonl"],
    ),
    "predict: model folder with a missing weights file": (
        lambda t, r: ["predict", "--model", str(without(r, t, "head/model.safetensors")), "--input", "x.txt"],
        ["head/model.safetensors is missing", "the folder is incomplete or damaged"],
    ),
    "evaluate: model folder without its config": (
        lambda t, r: [
            "evaluate",
            "--model",
            str(without(r, t, "config.json")),
            "--data",
            write(t / "d.jsonl", jsonl(rows(2))),
        ],
        ["copied/config.json is missing"],
    ),
    "predict: input is a folder (a path)": (
        lambda t, r: ["predict", "--model", str(r / "ft" / "artifact"), "--input", str(r) + "/"],
        ["is a folder: give a file, or a glob of its files such as"],
    ),
    "predict: input is a folder (a bare name, taken for a hub dataset first)": (
        lambda t, r: ["predict", "--model", str(r / "ft" / "artifact"), "--input", bare_folder(t, "texts")],
        ["is a local folder, which the datasets library could not read as a dataset", "texts/*.jsonl"],
    ),
    "export: not a run directory": (
        lambda t, r: ["export", "--run", str(t), "--to", "merged"],
        ["no config.yaml, so this is not a run directory"],
    ),
    "export: an adapter from a run without LoRA": (
        lambda t, r: ["export", "--run", str(r), "--to", "adapter", "--out", str(t / "out")],
        ["trained every backbone weight", "export --to merged instead"],
    ),
    "export: a phase that is not in the run": (
        lambda t, r: ["export", "--run", str(r), "--to", "merged", "--phase", "dae"],
        ["--phase dae is not a phase of this run (ft)"],
    ),
}


@pytest.mark.parametrize("case", list(ARTIFACT_CASES))
def test_bad_model_folders_and_inputs_are_one_clear_message(case, tmp_path, finished_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_argv, expected = ARTIFACT_CASES[case]
    write(tmp_path / "x.txt", "one line\n")
    code = cli.main([str(a) for a in make_argv(tmp_path, finished_run)])
    assert_one_clear_message(case, code, capsys.readouterr().err, expected)


def test_the_finished_run_itself_predicts(finished_run, tmp_path, capsys):
    """The cases above fail for the reason they name: the same run and folder work when nothing is wrong."""
    texts = write(tmp_path / "in.txt", "first\nsecond\n")
    assert cli.main(["predict", "--model", str(finished_run / "ft" / "artifact"), "--input", str(texts)]) == 0
    assert [json.loads(line)["label"] in ("a", "b") for line in capsys.readouterr().out.splitlines()] == [True, True]


def test_phase_dae_on_a_model_without_a_decoder_is_one_clear_message(tmp_path, capsys, monkeypatch):
    """DistilBERT has no causal-LM class with cross-attention in transformers: phase dae cannot build its decoder."""
    from conftest import minilm_path
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    model = tmp_path / "tiny_distilbert"
    DistilBertModel(config).save_pretrained(model)
    tokenizer.save_pretrained(model)
    capsys.readouterr()  # save_pretrained's progress bar
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    code = cli.main([*train_args(tmp_path, model), "--phase", "dae"])
    expected = ["model type 'distilbert'", "has no causal-LM decoder with cross-attention", "(cl_ft, ft)"]
    assert_one_clear_message("dae without a decoder", code, capsys.readouterr().err, expected)
