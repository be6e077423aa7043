"""The run report: <run>/report/report.html (self-contained) and the same figures as PNGs beside it.

Written by rank 0 at the end of `dcl-dist train` and on demand by `dcl-dist report RUN`, from what the run directory
holds (collect.py), drawn by matplotlib and scikit-learn (figures.py), laid out as one HTML page (page.py).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.figure import Figure

from dcl_dist.report import figures
from dcl_dist.report.collect import RunRecord, read_run
from dcl_dist.report.page import correction_of, page
from dcl_dist.rundir import RunDir

DPI = 100


def figures_of(record: RunRecord, map_method: str = "pca") -> dict[str, Figure]:
    """Each figure the run has data for, by the name of its PNG."""
    names = record.class_names
    ft = record.phase("ft")
    test = (ft.metrics.get("test") if ft else None) or {}
    maps = ([record.base] if record.base else []) + [p.embeddings for p in record.phases if p.embeddings]
    drawn = {
        "training": figures.training_curves(record.phases),
        "validation": figures.validation_curves(record.phases),
        "embeddings": figures.embedding_maps(maps, names, map_method),
        "confusion_matrix": figures.confusion(test, names) if test else None,
        "per_class": figures.per_class_scores(test, names) if test else None,
        "imbalance": figures.imbalance(correction_of(record)[0], names),
    }
    return {name: fig for name, fig in drawn.items() if fig is not None}


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_report(run_root: Path | str, map_method: str = "pca") -> Path:
    """Write the report of the run directory run_root; returns the HTML file's path."""
    if map_method not in figures.MAP_METHODS:
        raise ValueError(f"map_method {map_method}: one of {', '.join(figures.MAP_METHODS)}")
    record = read_run(Path(run_root))
    run_dir = RunDir(run_root)
    run_dir.report.mkdir(parents=True, exist_ok=True)
    images = {name: png(fig) for name, fig in figures_of(record, map_method).items()}
    for stale in run_dir.report.glob("*.png"):
        if stale.stem not in images:
            stale.unlink()
    for name, data in images.items():
        (run_dir.report / f"{name}.png").write_bytes(data)
    out = run_dir.report_file
    partial = out.with_name(out.name + ".partial")
    partial.write_text(page(record, images, map_method), encoding="utf-8")
    os.replace(partial, out)
    return out
