"""The report as one HTML file that needs nothing else: inline style, every figure a base64 PNG, no script, no
link to fetch. Each section has an id (SECTIONS) and stays in the page with a note when the run has nothing for it."""

from __future__ import annotations

import base64
import datetime
import html

import yaml

from dcl_dist import summary
from dcl_dist.report.collect import RunRecord
from dcl_dist.rundir import BASE

SECTIONS = {
    "summary": "Summary",
    "training": "Training: loss and learning rate",
    "validation": "Validation metrics over steps",
    "embeddings": "Validation embeddings by class",
    "test": "Test: confusion matrix and per-class scores",
    "imbalance": "Imbalance correction",
    "config": "Configuration",
}
"""Section id -> heading, in page order."""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.5em 2em 4em; color: #1d2329; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #d5dbe1; padding-bottom: 0.25em;
       margin-top: 2em; } .sub { color: #5a6672; margin-top: 0; }
nav a { margin-right: 1.1em; font-size: 0.92em; } .note { color: #5a6672; font-style: italic; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #d5dbe1; padding: 0.3em 0.7em; text-align: left; }
th { background: #f1f4f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eef1f4; }
figcaption { color: #5a6672; font-size: 0.88em; } pre { background: #f6f8fa; padding: 1em; overflow-x: auto; }
.headline { font-size: 1.15em; margin: 0.6em 0; } code { background: #f1f4f7; padding: 0 0.25em; }
"""


def page(record: RunRecord, images: dict[str, bytes], map_method: str) -> str:
    """The whole HTML page; images: figure name -> PNG bytes (the names figures_of gives)."""
    bodies = {
        "summary": _summary(record),
        "training": _figure(images, "training", "Training loss and learning rate, as logged to TensorBoard.")
        or _note("no training curves: TensorBoard was off (logging.tensorboard: false) or no step was logged"),
        "validation": _figure(images, "validation", "Each evaluation on the validation split.")
        or _note("no validation history recorded"),
        "embeddings": _embeddings(record, images, map_method),
        "test": _test(record, images),
        "imbalance": _imbalance(record, images),
        "config": "<details><summary>config.yaml (the resolved config of the run)</summary><pre>"
        + html.escape(yaml.safe_dump(record.config, sort_keys=False))
        + "</pre></details>",
    }
    nav = " ".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title in SECTIONS.items())
    sections = "\n".join(
        f'<section id="{key}">\n<h2>{html.escape(title)}</h2>\n{bodies[key]}\n</section>'
        for key, title in SECTIONS.items()
    )
    written = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"dcl-dist run report: {record.run_dir.root.name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f'<p class="sub">{html.escape(str(record.run_dir.root))} &middot; variant {html.escape(record.variant)}'
        f" &middot; written {written}</p>\n<nav>{nav}</nav>\n{sections}\n</body>\n</html>\n"
    )


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}.</p>'


def _figure(images: dict[str, bytes], name: str, caption: str) -> str:
    if name not in images:
        return ""
    data = base64.b64encode(images[name]).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)} (also {html.escape(name)}.png beside this file)</figcaption></figure>"
    )


def _table(header: list[str], rows: list[list[str]], numeric: range | None = None) -> str:
    """An HTML table; the columns in `numeric` (default: all but the first) right-aligned."""
    numeric = range(1, len(header)) if numeric is None else numeric
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(c)}</td>' if i in numeric else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(record: RunRecord) -> str:
    run_dir, phases = record.run_dir, [p.name for p in record.phases]
    metrics = {"phases": {p.name: p.metrics for p in record.phases}}
    parts = []
    ft = record.phase("ft")
    test = ft.metrics.get("test") if ft else None
    if test:
        parts.append(
            f'<p class="headline">Test (n = {test["n"]}): accuracy <b>{test["accuracy"]:.4f}</b>, macro-F1'
            f" <b>{test['macro_f1']:.4f}</b>, macro-precision {test['macro_precision']:.4f}, macro-recall"
            f" {test['macro_recall']:.4f}</p>"
        )
    base = record.config.get("model", {}).get("name_or_path", "")
    parts.append(
        f"<p>Phases {html.escape(' -> '.join(phases) or 'none finished')} from base model"
        f" <code>{html.escape(base)}</code>.</p>"
    )
    table = summary.rows(summary.phase_lines(run_dir, phases, metrics))
    parts.append(_table(table[0], table[1:], numeric=range(1, 4)))
    parts.append(_note("time: the phase's training loop (steps, validation, checkpoints), summed over its runs"))
    parts.append(f"<p>{html.escape(summary.disk_line(run_dir, summary.disk_usage(run_dir, phases)))}</p>")
    if record.missing:
        parts.append(_note(f"not finished yet: {', '.join(record.missing)}"))
    return "\n".join(parts)


def _embeddings(record: RunRecord, images: dict[str, bytes], map_method: str) -> str:
    maps = ([record.base] if record.base else []) + [p.embeddings for p in record.phases if p.embeddings]
    if not maps:
        return _note("no embeddings recorded: they go to TensorBoard's projector, and TensorBoard was off")
    how = "the first two principal components (PCA)" if map_method == "pca" else "a t-SNE map"
    n = max(len(m.vectors) for m in maps)
    rows = [
        [
            "base encoder" if m.name == BASE else m.name,
            f"{m.diagnostics.get('silhouette', float('nan')):.4f}",
            f"{m.diagnostics.get('knn_accuracy', float('nan')):.4f}",
        ]
        for m in maps
    ]
    caption = (
        f"Each point is a validation text ({n} shown), placed by {how} of the encoder's output, coloured by its class."
        " Silhouette by class (cosine) and 5-NN accuracy are computed on the whole validation split, in full dimension."
    )
    return _figure(images, "embeddings", caption) + _table(["encoder", "silhouette", "5-NN accuracy"], rows)


def _test(record: RunRecord, images: dict[str, bytes]) -> str:
    ft = record.phase("ft")
    test = ft.metrics.get("test") if ft else None
    if not test:
        return _note("no test metrics: the run has no data.test, or phase ft has not finished")
    names = record.class_names
    per_class = test.get("per_class", {})
    rows = [
        [
            c,
            f"{per_class[c]['precision']:.4f}",
            f"{per_class[c]['recall']:.4f}",
            f"{per_class[c]['f1-score']:.4f}",
            str(int(per_class[c]["support"])),
        ]
        for c in names
        if c in per_class
    ]
    return (
        _figure(images, "confusion_matrix", "Rows: the true class; columns: the predicted class.")
        + _figure(images, "per_class", "Precision, recall and F1 of each class on test.")
        + _table(["class", "precision", "recall", "F1", "n"], rows)
    )


def _imbalance(record: RunRecord, images: dict[str, bytes]) -> str:
    correction, phase = correction_of(record)
    if not correction:
        return _note("no imbalance correction in this variant (it runs without phase cl or joint)")
    names = record.class_names
    rows = [
        [c, str(before), str(after), f"{ratio:.2f}"]
        for c, before, after, ratio in zip(
            names, correction["counts"], correction["corrected_counts"], correction["ratios"]
        )
    ]
    bounds = f"min_ratio {correction.get('min_ratio')}, max_ratio {correction.get('max_ratio')}"
    preset = html.escape(str(correction.get("imbalance")))
    text = f"<p>Preset <code>{preset}</code> ({html.escape(bounds)}), phase {phase}.</p>"
    caption = "Training examples per class before and after the correction (extra copies of the smaller classes)."
    return text + _figure(images, "imbalance", caption) + _table(["class", "train", "after correction", "ratio"], rows)


def correction_of(record: RunRecord) -> tuple[dict | None, str | None]:
    """The imbalance-correction record of the run's cl or joint phase."""
    for phase in record.phases:
        if phase.metrics.get("imbalance_correction"):
            return phase.metrics["imbalance_correction"], phase.name
    return None, None
