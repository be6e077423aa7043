"""The report's figures, drawn by matplotlib (Figure objects: no pyplot state, no display needed) from numbers the
run recorded; the 2-D maps of the embeddings are scikit-learn's PCA (or t-SNE), the confusion matrix its
ConfusionMatrixDisplay."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from dcl_dist.report.collect import Embeddings, PhaseRecord
from dcl_dist.rundir import BASE
from dcl_dist.summary import HEADLINE

PANEL = (4.6, 3.4)
"""Inches of one panel; figures are saved at 100 dpi."""
MAP_METHODS = ("pca", "tsne")


def class_colours(class_names: Sequence[str]) -> dict[str, tuple]:
    """The same colour for a class in every figure."""
    n = len(class_names)
    if n <= 20:
        cmap = colormaps["tab10" if n <= 10 else "tab20"]
        return {c: cmap(i) for i, c in enumerate(class_names)}
    cmap = colormaps["turbo"]
    return {c: cmap(i / (n - 1)) for i, c in enumerate(class_names)}


def training_curves(phases: list[PhaseRecord]) -> Figure | None:
    """Per phase: the training loss and the learning rate over steps (TensorBoard's scalars)."""
    shown = [p for p in phases if p.scalars.get("loss")]
    if not shown:
        return None
    fig = Figure(figsize=(2 * PANEL[0], PANEL[1] * len(shown) * 0.8), layout="constrained")
    axes = fig.subplots(len(shown), 2, squeeze=False)
    for row, phase in zip(axes, shown):
        for ax, tag, label in ((row[0], "loss", "training loss"), (row[1], "lr", "learning rate")):
            points = phase.scalars.get(tag, [])
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="." if len(points) < 30 else None, color="C0")
            ax.set_title(f"{phase.name}: {label}", fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        row[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return fig


def validation_curves(phases: list[PhaseRecord]) -> Figure | None:
    """Per phase: every validation metric of its history over steps, the best of its headline metric marked."""
    shown = [p for p in phases if p.metrics.get("history")]
    if not shown:
        return None
    fig = Figure(figsize=(PANEL[0] * len(shown), PANEL[1]), layout="constrained")
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for ax, phase in zip(axes, shown):
        history = phase.metrics["history"]
        steps = [row["step"] for row in history]
        names = [k for k, v in history[0].items() if k not in ("step", "epoch") and isinstance(v, (int, float))]
        headline, better = HEADLINE.get(phase.name, (phase.metrics.get("select_metric"), max))
        for i, name in enumerate(names):
            values = [row.get(name, np.nan) for row in history]
            ax.plot(steps, values, marker="o", markersize=3, label=name, color=f"C{i}")
            if name == headline:
                best = better(range(len(values)), key=lambda j: values[j])
                ax.scatter([steps[best]], [values[best]], s=80, facecolors="none", edgecolors="black", zorder=3)
        ax.set_title(f"{phase.name} (circled: best {headline})", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def map_2d(vectors: np.ndarray, method: str = "pca") -> np.ndarray:
    """(points, hidden) -> (points, 2): the first two principal components, or a t-SNE map (seeded)."""
    if len(vectors) < 3:
        return np.pad(vectors[:, :2], ((0, 0), (0, max(0, 2 - vectors.shape[1]))))
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(vectors) - 1) // 3)))
        return TSNE(2, init="pca", random_state=0, perplexity=perplexity).fit_transform(vectors)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=0).fit_transform(vectors)


def embedding_maps(maps: list[Embeddings], class_names: list[str], method: str = "pca") -> Figure | None:
    """The validation embeddings of the base encoder and of each phase in 2-D, coloured by class."""
    if not maps:
        return None
    colours = class_colours(class_names)
    columns = min(len(maps), 4)
    rows = -(-len(maps) // columns)
    fig = Figure(figsize=(PANEL[0] * columns, (PANEL[0] - 0.2) * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    size = float(np.clip(4000 / max(len(maps[0].vectors), 1), 6, 36))  # a few points big enough to see, many small
    for ax, emb in zip(axes, maps):
        xy = map_2d(emb.vectors, method)
        for name in class_names:
            pick = [i for i, c in enumerate(emb.point_class_names) if c == name]
            ax.scatter(xy[pick, 0], xy[pick, 1], s=size, alpha=0.75, color=colours[name], label=name, linewidths=0)
        title = "base encoder" if emb.name == BASE else f"after {emb.name}"
        d = emb.diagnostics
        if d:
            title += f"\nsilhouette {d.get('silhouette', np.nan):.3f}, kNN {d.get('knn_accuracy', np.nan):.3f}"
        ax.set_title(title, fontsize=12)  # four panels shrink to the page's width
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(maps) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(class_names), 8),
        fontsize=11,
        markerscale=np.sqrt(40 / size),
    )
    return fig


def confusion(test: dict, class_names: list[str]) -> Figure | None:
    """The test confusion matrix (rows: true class, columns: predicted)."""
    matrix = test.get("confusion_matrix")
    if not matrix:
        return None
    from sklearn.metrics import ConfusionMatrixDisplay

    side = max(4.5, 0.55 * len(class_names) + 2.5)
    fig = Figure(figsize=(side, side * 0.9), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=class_names).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45
    )
    ax.set_title(f"test confusion matrix (n = {test['n']})", fontsize=10)
    return fig


def per_class_scores(test: dict, class_names: list[str]) -> Figure | None:
    """Test precision, recall and F1 of each class, with its number of test examples."""
    per_class = test.get("per_class")
    if not per_class:
        return None
    x = np.arange(len(class_names))
    fig = Figure(figsize=(max(PANEL[0], 0.9 * len(class_names) + 2), PANEL[1]), layout="constrained")
    ax = fig.subplots()
    for i, (key, label) in enumerate((("precision", "precision"), ("recall", "recall"), ("f1-score", "F1"))):
        ax.bar(x + (i - 1) * 0.27, [per_class[c][key] for c in class_names], 0.27, label=label, color=f"C{i}")
    ax.set_xticks(x, [f"{c}\n(n={int(per_class[c]['support'])})" for c in class_names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("test, per class", fontsize=10, pad=22)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, frameon=False)  # over no bar
    ax.grid(axis="y", alpha=0.3)
    return fig


def imbalance(correction: dict, class_names: list[str]) -> Figure | None:
    """Training examples per class before and after the imbalance correction (phase cl's corrected set)."""
    if not correction:
        return None
    x = np.arange(len(class_names))
    fig = Figure(figsize=(max(PANEL[0], 0.9 * len(class_names) + 2), PANEL[1]), layout="constrained")
    ax = fig.subplots()
    ax.bar(x - 0.2, correction["counts"], 0.4, label="train", color="C7")
    ax.bar(x + 0.2, correction["corrected_counts"], 0.4, label="after correction", color="C0")
    ax.set_xticks(x, class_names, fontsize=8, rotation=30 if len(class_names) > 6 else 0)
    ax.set_ylabel("examples")
    ax.set_title(f"imbalance correction: {correction.get('imbalance')}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig
