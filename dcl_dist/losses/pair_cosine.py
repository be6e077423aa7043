"""The paper's contrastive loss (eq. 3): L = (t(u, v) - cos(u, v))^2, averaged over pairs.

t(u, v) = sum over label levels of w_level * [u and v agree at that level] (1 / 0 with one level).
Pair mode takes given pairs; in-batch mode takes every pair of the global batch whose two examples come from
different sources, each rank computing its own rows against the gathered batch (losses/local_rows.py).
"""

from __future__ import annotations

import torch
from torch import nn

from dcl_dist.losses.local_rows import GatheredBatch, gather_batch, local_rows_loss, same_source_pairs


def pair_targets(levels_a: torch.Tensor, levels_b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(..., levels) x (..., levels) -> (...) weighted label agreement."""
    return ((levels_a == levels_b).to(weights.dtype) * weights).sum(-1)


def level_weights(n_levels: int, given: list[float] | None) -> torch.Tensor:
    """The weights of the label levels: the config's, normalised to sum 1, or 1/levels each."""
    w = torch.tensor(given if given is not None else [1.0] * n_levels, dtype=torch.float32)
    return w / w.sum()


def all_pairs_cosine_mse(
    z: torch.Tensor, levels: torch.Tensor, weights: torch.Tensor, sources: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of (t - cos)^2 over every pair i < j of the rows of z (batch, hidden); levels (batch, levels).

    With sources (batch,), pairs of the same source are left out. The whole (batch, batch) matrix at once:
    validation and the reference of the tests; training uses InBatchCosineLoss.
    """
    n = z.shape[0]
    z = nn.functional.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=-1)
    cos = z @ z.T
    target = pair_targets(levels[:, None, :], levels[None, :, :], weights.to(z.device))
    squared = (target - cos) ** 2
    if sources is None:
        if n < 2:
            return z.sum() * 0.0
        # symmetric: the mean over i < j is the mean over i != j, with no (n^2 / 2)-long index tensors
        return (squared.sum() - squared.diagonal().sum()) / (n * (n - 1))
    used = sources[:, None] != sources[None, :]
    pairs = n * n - same_source_pairs(sources)
    return squared.masked_fill(~used, 0.0).sum() / pairs if pairs else z.sum() * 0.0


class PairCosineLoss(nn.Module):
    """Pair mode: mean of (t - cos(u, v))^2 over the given pairs (never two of one source: data/balance.py)."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", weights, persistent=False)

    def forward(
        self, embeddings: torch.Tensor, levels: torch.Tensor, sources: torch.Tensor | None = None
    ) -> torch.Tensor:
        """embeddings (2 x pairs, hidden): the pairs' first rows, then their partners; levels likewise -> scalar."""
        u, v = embeddings.float().chunk(2)
        levels_u, levels_v = levels.chunk(2)
        cos = nn.functional.cosine_similarity(u, v, dim=-1)
        target = pair_targets(levels_u, levels_v, self.weights.to(cos.device))
        return ((target - cos) ** 2).mean()


class InBatchCosineLoss(nn.Module):
    """In-batch mode: mean of (t - cos)^2 over every pair of different sources of the gathered global batch.

    Each rank computes its rows against every column; the columns need no gradient: the loss is symmetric, so the
    gradient of the mean over unordered pairs with respect to x_i is twice that of row i's own terms, and no
    gradient travels back through the gather.
    """

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", weights, persistent=False)

    def forward(
        self, embeddings: torch.Tensor, levels: torch.Tensor, sources: torch.Tensor | None = None
    ) -> torch.Tensor:
        """embeddings (batch, hidden), levels (batch, levels), sources (batch,) of this rank -> scalar, equal on
        every rank."""
        batch = gather_batch(embeddings, levels, sources, columns_need_grad=False)
        return local_rows_loss(batch, _CosineMseTerms(self.weights.to(batch.rows.device)))


class _CosineMseTerms:
    """(t - cos)^2 terms of a block of rows; the gradient of the mean over unordered pairs (x 2 for symmetry)."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights

    def count(self, batch: GatheredBatch) -> int:
        n = batch.sources.shape[0]
        return n * n - same_source_pairs(batch.sources)

    def block(self, batch: GatheredBatch, rows: slice, global_rows: slice) -> tuple[torch.Tensor, torch.Tensor, None]:
        # in place: one float block matrix (cos - t) and one bool mask alive at once
        diff = batch.rows[rows] @ batch.columns.T
        for level, w in enumerate(self.weights.tolist()):
            diff.add_(batch.levels[global_rows, level, None] == batch.levels[None, :, level], alpha=-w)
        diff.masked_fill_(batch.unused(global_rows), 0.0)
        flat = diff.view(-1)
        # d/dx_i of sum over ordered pairs: x_i's row and its column give the same terms (symmetry): 2 x 2 diff
        return torch.dot(flat, flat).double(), 4.0 * (diff @ batch.columns), None
