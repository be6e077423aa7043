"""Metrics: classification (accuracy, macro P/R/F1, per-class report, confusion matrix), embedding
diagnostics (silhouette by class, kNN accuracy) and training efficiency (model FLOPs, MFU)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    silhouette_score,
)


def classification_metrics(
    labels: list[int], predictions: list[int], class_names: list[str], full: bool = False
) -> dict:
    """accuracy and macro precision / recall / F1; with full, also the per-class report and confusion matrix."""
    ids = list(range(len(class_names)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=ids, average="macro", zero_division=0
    )
    out = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
        "n": len(labels),
    }
    if full:
        out["per_class"] = classification_report(
            labels, predictions, labels=ids, target_names=class_names, output_dict=True, zero_division=0
        )
        out["confusion_matrix"] = confusion_matrix(labels, predictions, labels=ids).tolist()
    return out


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy by cosine similarity (majority vote, ties to the nearest)."""
    n = len(labels)
    if n < 2:
        return float("nan")
    z = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
    k = min(k, n - 1)
    correct = 0
    for start in range(0, n, 1024):
        sims = z[start : start + 1024] @ z.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        nearest = np.argsort(-sims, axis=1)[:, :k]
        for r, neigh in enumerate(nearest):
            votes = labels[neigh]
            values, counts = np.unique(votes, return_counts=True)
            best = values[counts == counts.max()]
            guess = next(v for v in votes if v in best)  # ties: the class of the nearest among the tied
            correct += int(guess == labels[start + r])
    return correct / n


def silhouette(embeddings: np.ndarray, labels: np.ndarray, max_examples: int = 5000, seed: int = 0) -> float:
    """Silhouette score of the classes under cosine distance (in [-1, 1]; higher: tighter, better separated)."""
    if len(set(labels.tolist())) < 2 or len(labels) < 3:
        return float("nan")
    if len(labels) > max_examples:
        pick = np.random.default_rng(seed).choice(len(labels), max_examples, replace=False)
        embeddings, labels = embeddings[pick], labels[pick]
    return float(silhouette_score(embeddings, labels, metric="cosine"))


def embedding_diagnostics(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """What the representation looks like by class: silhouette and 5-NN accuracy."""
    return {"silhouette": silhouette(embeddings, labels), "knn_accuracy": knn_accuracy(embeddings, labels)}
