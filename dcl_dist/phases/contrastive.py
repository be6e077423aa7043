"""The contrastive objective of phases cl and joint: the loss cl.mode and cl.loss choose, phase cl's model (the
encoder and that loss, embedding in cached chunks if cl.embed_chunk_size says so), and its validation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dcl_dist.config import Config
from dcl_dist.data.batching import Tokenize
from dcl_dist.evaluation import encoder_diagnostics
from dcl_dist.losses.pair_cosine import InBatchCosineLoss, PairCosineLoss, all_pairs_cosine_mse, level_weights
from dcl_dist.losses.supcon import SupConLoss
from dcl_dist.models.chunked import forward_in_chunks
from dcl_dist.models.encoder import SentenceEncoder
from dcl_dist.phases.context import PhaseContext
from dcl_dist.seeds import validation_subset_rng

EVAL_LOSS_MAX_EXAMPLES = 2000
"""The contrastive validation loss takes every pair of at most this many validation examples (a fixed subset)."""


def contrastive_loss(cfg: Config, n_levels: int) -> torch.nn.Module:
    """The loss phase cl (and the joint phase) minimises, from cl.mode and cl.loss."""
    weights = level_weights(n_levels, cfg.cl.level_weights)
    if cfg.cl.mode == "pair":
        return PairCosineLoss(weights)
    if cfg.cl.loss == "supcon":
        return SupConLoss(cfg.cl.temperature)
    return InBatchCosineLoss(weights)


class ContrastiveModel(nn.Module):
    """Phase cl's model: forward(batch) -> the micro-batch's contrastive loss.

    The loss sits inside the module the engine wraps, so that one engine call embeds the whole micro-batch,
    however many cached chunks it takes (DeepSpeed hooks its backward bookkeeping onto each engine call's output).
    """

    def __init__(self, encoder: SentenceEncoder, loss: nn.Module, chunk_size: int | None = None):
        super().__init__()
        self.encoder, self.loss, self.chunk_size = encoder, loss, chunk_size

    def forward(self, batch: dict) -> torch.Tensor:
        embeddings = forward_in_chunks(
            self.encoder, self.chunk_size, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
        return self.loss(embeddings, batch["levels"], batch.get("sources"))


def contrastive_evaluator(
    ctx: PhaseContext, phase: str, encoder: torch.nn.Module, tokenize: Tokenize, n_levels: int
) -> Callable[[], dict[str, float]]:
    """Validation of an encoder trained to cluster by class: the paper's loss over all pairs, silhouette, kNN."""
    validation = ctx.splits.validation
    subset = np.sort(validation_subset_rng(ctx.cfg.run.seed).permutation(len(validation))[:EVAL_LOSS_MAX_EXAMPLES])
    levels = torch.tensor([validation.levels[i] for i in subset.tolist()])
    weights = level_weights(n_levels, ctx.cfg.cl.level_weights)
    batch_size = ctx.eval_batch_size(phase)

    def evaluate() -> dict[str, float]:
        diagnostics, vectors = encoder_diagnostics(encoder, tokenize, validation.texts, validation.labels, batch_size)
        return {"cosine_mse": float(all_pairs_cosine_mse(vectors[subset.tolist()], levels, weights)), **diagnostics}

    return evaluate
