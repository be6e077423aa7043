"""The paper's contrastive loss (eq. 3): L = (t(u, v) - cos(u, v))^2, averaged over pairs.

t(u, v) = sum over label levels of w_level * [u and v agree at that level] (1 / 0 with one level).
Pair mode takes given pairs; in-batch mode all-gathers the embeddings of every rank (with gradients) and
takes every pair i < j of the global batch, the same loss on every rank.
"""

from __future__ import annotations

import torch
from torch import nn

from dcl_dist import dist


def pair_targets(levels_a: torch.Tensor, levels_b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(..., levels) x (..., levels) -> (...) weighted label agreement."""
    return ((levels_a == levels_b).to(weights.dtype) * weights).sum(-1)


def level_weights(n_levels: int, given: list[float] | None) -> torch.Tensor:
    """The weights of the label levels: the config's, normalised to sum 1, or 1/levels each."""
    w = torch.tensor(given if given is not None else [1.0] * n_levels, dtype=torch.float32)
    return w / w.sum()


def all_pairs_cosine_mse(z: torch.Tensor, levels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of (t - cos)^2 over every pair i < j of the rows of z (batch, hidden); levels (batch, levels)."""
    n = z.shape[0]
    if n < 2:
        return z.sum() * 0.0
    z = nn.functional.normalize(z.float(), dim=-1)
    cos = z @ z.T
    target = pair_targets(levels[:, None, :], levels[None, :, :], weights.to(z.device))
    squared = (target - cos) ** 2
    # symmetric: the mean over i < j is the mean over i != j, with no (n^2 / 2)-long index tensors
    return (squared.sum() - squared.diagonal().sum()) / (n * (n - 1))


class PairCosineLoss(nn.Module):
    """Pair mode: mean of (t - cos(u, v))^2 over the given pairs."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, embeddings: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """embeddings (2 x pairs, hidden): the pairs' first rows, then their partners; levels likewise -> scalar."""
        u, v = embeddings.float().chunk(2)
        levels_u, levels_v = levels.chunk(2)
        cos = nn.functional.cosine_similarity(u, v, dim=-1)
        target = pair_targets(levels_u, levels_v, self.weights.to(cos.device))
        return ((target - cos) ** 2).mean()


class InBatchCosineLoss(nn.Module):
    """In-batch mode: mean of (t - cos)^2 over every pair i < j of the all-gathered global batch."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, embeddings: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """embeddings (batch, hidden), levels (batch, levels) of this rank -> scalar, equal on every rank."""
        z = dist.all_gather_with_grad(embeddings.float())
        return all_pairs_cosine_mse(z, dist.all_gather_no_grad(levels), self.weights)
