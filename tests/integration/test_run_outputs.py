"""What a user gets after `dcl-dist train`, from one tiny three_phase run with LoRA in cl and ft: the summary table,
no checkpoints left of finished phases, the run report (every section, every image decodes, nothing to fetch),
and a model card in every artifact and export whose usage snippets run as written."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from dcl_dist import cli
from dcl_dist.report.page import SECTIONS
from helpers import short_run, write_small_dataset
from integration.cli import dcl_dist, env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHASES = ("dae", "cl", "ft")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model):
    """(run directory, train's output) of a three_phase run with LoRA in cl and ft, and its adapter export."""
    tmp = tmp_path_factory.mktemp("outputs")
    data = write_small_dataset(tmp)
    run_dir = tmp / "run"
    overrides = short_run(tiny_model, data, run_dir, "lora.enabled=true", "lora.phases=[cl,ft]")
    proc = dcl_dist("train", "--config", "configs/quickstart.yaml", *overrides)
    for form in ("adapter", "merged"):
        dcl_dist("export", "--run", run_dir, "--to", form)
    return run_dir, proc


def test_train_ends_with_the_summary_and_leaves_no_finished_checkpoint(lora_run):
    run_dir, proc = lora_run
    summary = proc.stdout[proc.stdout.index("train took") :].splitlines()
    assert summary[1].split()[:4] == ["phase", "time", "steps", "samples/s"]
    assert [line.split()[0] for line in summary[2:5]] == list(PHASES)
    for line, phase in zip(summary[2:5], PHASES):
        assert line.endswith(str(run_dir / phase / "artifact"))
    assert re.fullmatch(rf"run directory {run_dir} holds [\d.]+ MB: artifacts [\d.]+ MB, checkpoints 0 B", summary[5])
    assert summary[6] == f"report: {run_dir / 'report' / 'report.html'}"
    for phase in PHASES:
        assert not (run_dir / phase / "checkpoints").exists() and not (run_dir / phase / "best").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for phase in PHASES:
        training = metrics["phases"][phase]["training"]
        assert training["seconds"] > 0 and training["samples"] > 0


class _Page(HTMLParser):
    """The section ids, image sources and links of an HTML page."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs and not attrs[key].startswith(("#", "data:")):
                self.links.append(attrs[key])


def read_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_has_every_section_and_every_image_decodes(lora_run):
    run_dir, _ = lora_run
    page = read_page(run_dir / "report" / "report.html")
    assert page.sections == list(SECTIONS)
    assert page.links == []  # self-contained: nothing to fetch
    pngs = sorted((run_dir / "report").glob("*.png"))
    names = ["confusion_matrix", "embeddings", "imbalance", "per_class", "training", "validation"]
    assert [p.stem for p in pngs] == names
    embedded = [base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in page.images]
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)
    for data in embedded:
        image = Image.open(io.BytesIO(data))
        image.verify()
        assert image.format == "PNG" and min(image.size) > 200
    html = (run_dir / "report" / "report.html").read_text()
    for row in ("<td>base encoder</td>", "<td>dae</td>", "<td>cl</td>", "<td>ft</td>"):
        assert row in html.split('id="embeddings"')[1].split("</section>")[0]


def test_report_on_demand_with_a_tsne_map(lora_run):
    run_dir, _ = lora_run
    report = run_dir / "report" / "report.html"
    before = report.stat().st_mtime_ns
    assert cli.main(["report", str(run_dir), "--map", "tsne"]) == 0
    assert report.stat().st_mtime_ns > before and "a t-SNE map" in report.read_text()
    assert read_page(report).sections == list(SECTIONS)


def code_blocks(card: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", card, flags=re.S)


RUNNER = """
import json, sys
for i, snippet in enumerate(json.load(open(sys.argv[1]))):
    print(f"--- snippet {i}", flush=True)
    exec(compile(snippet, f"snippet {i}", "exec"), {"__name__": "__main__"})
"""


def run_snippets(card: str, cwd: Path) -> str:
    """Every python block of the card in one process (each in its own namespace), then every bash block."""
    snippets = cwd / "snippets.json"
    snippets.write_text(json.dumps(code_blocks(card, "python")))
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(snippets)], capture_output=True, text=True, env=env(), cwd=cwd, timeout=600
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    for block in code_blocks(card, "bash"):
        script = block.replace("dcl-dist ", f"{sys.executable} -m dcl_dist.cli ")
        done = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, env=env(), cwd=cwd, timeout=600)
        assert done.returncode == 0, f"{block}\n{done.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.parametrize("folder", ["ft/artifact", "export/adapter"])
def test_model_card_snippets_run(lora_run, folder, tmp_path):
    run_dir, _ = lora_run
    path = run_dir / folder
    card = (path / "README.md").read_text()
    data = ModelCard(card).data
    assert data.pipeline_tag == "text-classification" and "dcl-dist" in data.tags
    assert data.library_name == ("peft" if folder.startswith("export/adapter") else "sentence-transformers")
    assert {r.metric_type for r in data.eval_results} == {"accuracy", "f1"}
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert f"test (n = {test['n']}): accuracy {test['accuracy']:.4f}" in card
    assert "| cl | r 8, alpha 16.0, on query, value | merged |" in card
    out = run_snippets(card, tmp_path)
    expected = 4 if folder == "ft/artifact" else 2  # predict + sentence-transformers + transformers + peft; or 2
    assert out.count("--- snippet") == expected
    assert "torch.Size([2, 32])" in out or folder.startswith("export/adapter")  # transformers: the pooled states
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and set(rows[0]["probabilities"]) == {"food", "music", "weather"}


def test_every_artifact_and_export_carries_a_card(lora_run):
    run_dir, _ = lora_run
    for folder in ("dae/artifact", "cl/artifact", "ft/artifact", "export/adapter", "export/merged"):
        card = (run_dir / folder / "README.md").read_text()
        data = ModelCard(card).data
        assert data.library_name in ("sentence-transformers", "peft") and data.tags, folder
        # the snippets load the folder where it lives, not where it was built before the rename into place
        assert str(run_dir / folder) in card and ".partial" not in card, folder
    encoder_card = (run_dir / "cl" / "artifact" / "README.md").read_text()
    assert "sentence-similarity" in encoder_card and "dcl-dist predict" not in encoder_card
    assert "Training examples per class, before and after the imbalance correction" in encoder_card
