"""Supervised contrastive loss (Khosla et al. 2020, L_out) over the all-gathered global batch."""

from __future__ import annotations

import torch
from torch import nn

from dcl_dist.losses.local_rows import GatheredBatch, gather_batch, local_rows_loss


def supcon(
    z: torch.Tensor, labels: torch.Tensor, temperature: float, sources: torch.Tensor | None = None
) -> torch.Tensor:
    """z (batch, hidden), labels (batch,) -> mean over anchors with a positive of
    -mean over its positives p of log(exp(sim(a, p) / T) / sum over k != a of exp(sim(a, k) / T)).

    With sources (batch,), pairs of the same source are neither positives nor in the sum over k. The whole
    (batch, batch) matrix at once: the reference of the tests; training uses SupConLoss.
    """
    z = nn.functional.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)
    n = z.shape[0]
    excluded = torch.eye(n, dtype=torch.bool, device=z.device)
    if sources is not None:
        excluded = sources[:, None] == sources[None, :]
    logits = (z @ z.T / temperature).masked_fill(excluded, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~excluded
    counts = positive.sum(1)
    has_positive = counts > 0
    if not has_positive.any():
        return z.sum() * 0.0
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(1)[has_positive] / counts[has_positive]
    return per_anchor.mean()


class SupConLoss(nn.Module):
    """SupCon on the gathered batch; positives share the finest label (level 0) and come from another source.

    Each rank computes its anchors (rows) against every column. The loss is not symmetric in a pair, so the
    columns carry their gradient back through the gather (a reduce-scatter of every rank's column gradients).
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(
        self, embeddings: torch.Tensor, levels: torch.Tensor, sources: torch.Tensor | None = None
    ) -> torch.Tensor:
        """embeddings (batch, hidden), levels (batch, levels), sources (batch,) of this rank -> scalar, equal on
        every rank."""
        batch = gather_batch(embeddings, levels, sources, columns_need_grad=True)
        return local_rows_loss(batch, _SupConTerms(self.temperature))


def anchors_with_positive(labels: torch.Tensor, sources: torch.Tensor) -> int:
    """How many examples have a positive: another example of their label from another source."""
    _, label_index, label_counts = torch.unique(labels, return_inverse=True, return_counts=True)
    pairs = torch.stack([labels, sources], 1)
    _, pair_index, pair_counts = torch.unique(pairs, dim=0, return_inverse=True, return_counts=True)
    return int(((label_counts[label_index] - pair_counts[pair_index]) > 0).sum())


class _SupConTerms:
    """SupCon's per-anchor terms of a block of anchors, with the gradient for the anchors and for every column."""

    def __init__(self, temperature: float):
        self.temperature = temperature

    def count(self, batch: GatheredBatch) -> int:
        return anchors_with_positive(batch.levels[:, 0], batch.sources)

    def block(
        self, batch: GatheredBatch, rows: slice, global_rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        anchors, t = batch.rows[rows], self.temperature
        used = batch.used(global_rows)
        logits = (anchors @ batch.columns.T / t).masked_fill(~used, float("-inf"))
        labels = batch.levels[:, 0]
        positive = used & (labels[global_rows, None] == labels[None, :])
        counts = positive.sum(1, keepdim=True)
        has_positive = counts > 0
        # an anchor without a positive takes no part; one may have no used column at all (its logsumexp is -inf)
        log_prob = logits - torch.logsumexp(logits, 1, keepdim=True).masked_fill(~has_positive, 0.0)
        per_anchor = -torch.where(positive, log_prob, 0.0).sum(1) / counts.squeeze(1).clamp(min=1)
        # d term / d logits = softmax - positive / count, for anchors with a positive
        grad_logits = torch.where(used & has_positive, log_prob.exp(), 0.0) - positive / counts.clamp(min=1)
        grad_anchors = grad_logits @ batch.columns / t
        grad_columns = grad_logits.T @ anchors / t
        return per_anchor.sum().double(), grad_anchors, grad_columns
