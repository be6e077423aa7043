"""Inference over a whole split, sharded over ranks and gathered back in order (every rank gets the result)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dcl_dist import dist, interrupt
from dcl_dist.data.batching import Tokenize, even_shard
from dcl_dist.metrics import classification_metrics, embedding_diagnostics


@torch.no_grad()
def sharded_apply(
    fn: Callable[[dict], torch.Tensor], collate: Callable[[list[int]], dict], n: int, batch_size: int
) -> torch.Tensor:
    """fn over items 0..n-1 in batches, each rank taking every world-th item; returns (n, ...) in item order.

    Every rank runs the same number of batches (short shards repeat an item), as ZeRO-3 requires, and between two
    batches the ranks agree on any stop request (interrupt.EvaluationStopped): a stop never waits for a whole split.
    """
    rank, world = dist.rank(), dist.world_size()
    indices, _ = even_shard(n, rank, world)
    device = dist.device()
    outs = []
    for start in range(0, len(indices), batch_size):
        interrupt.check_between_batches()
        batch = {k: v.to(device) for k, v in collate(indices[start : start + batch_size]).items()}
        outs.append(fn(batch).float())
    local = torch.cat(outs) if outs else torch.zeros(0)
    if world == 1:
        return local.cpu()
    gathered = dist.all_gather_no_grad(local).cpu()
    per_rank = len(indices)
    result = torch.empty((n, *gathered.shape[1:]), dtype=gathered.dtype)
    for r in range(world):
        real = len(range(r, n, world))
        result[r::world] = gathered[r * per_rank : r * per_rank + real]
    return result


def texts_collate(tokenize: Tokenize, texts: list[str]) -> Callable[[list[int]], dict]:
    return lambda items: tokenize([texts[i] for i in items])


def embed(encoder: torch.nn.Module, tokenize: Tokenize, texts: list[str], batch_size: int) -> torch.Tensor:
    """Sentence vectors (n, hidden) of `texts`."""
    return sharded_apply(
        lambda b: encoder(b["input_ids"], b["attention_mask"]), texts_collate(tokenize, texts), len(texts), batch_size
    )


def predict_proba(classifier: torch.nn.Module, tokenize: Tokenize, texts: list[str], batch_size: int) -> torch.Tensor:
    """Class probabilities (n, classes) of `texts`."""
    return sharded_apply(
        lambda b: torch.softmax(classifier(b["input_ids"], b["attention_mask"]).float(), -1),
        texts_collate(tokenize, texts),
        len(texts),
        batch_size,
    )


def classifier_metrics(
    classifier: torch.nn.Module,
    tokenize: Tokenize,
    texts: list[str],
    labels: list[int],
    class_names: list[str],
    batch_size: int,
    full: bool = False,
) -> dict:
    """Accuracy, macro P/R/F1 (and with full the per-class report and confusion matrix) of a classifier."""
    proba = predict_proba(classifier, tokenize, texts, batch_size)
    return classification_metrics(labels, proba.argmax(-1).tolist(), class_names, full)


def encoder_diagnostics(
    encoder: torch.nn.Module, tokenize: Tokenize, texts: list[str], labels: list[int], batch_size: int
) -> tuple[dict[str, float], torch.Tensor]:
    """(silhouette and kNN accuracy by class, the embeddings) of an encoder on a labelled split."""
    vectors = embed(encoder, tokenize, texts, batch_size)
    return embedding_diagnostics(vectors.numpy(), np.asarray(labels)), vectors
