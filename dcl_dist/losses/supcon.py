"""Supervised contrastive loss (Khosla et al. 2020, L_out) over the all-gathered global batch."""

from __future__ import annotations

import torch
from torch import nn

from dcl_dist import dist


class SupConLoss(nn.Module):
    """For each anchor with at least one positive: -mean over its positives of log softmax(sim / T) over all others."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """embeddings (batch, hidden), levels (batch, levels) of this rank -> scalar, equal on every rank.

        Positives share the finest label (level 0).
        """
        z = nn.functional.normalize(dist.all_gather_with_grad(embeddings.float()), dim=-1)
        labels = dist.all_gather_no_grad(levels)[:, 0]
        n = z.shape[0]
        logits = z @ z.T / self.temperature
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positive = (labels[:, None] == labels[None, :]) & ~self_mask
        counts = positive.sum(1)
        has_positive = counts > 0
        if not has_positive.any():
            return z.sum() * 0.0
        per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(1)[has_positive] / counts[has_positive]
        return per_anchor.mean()
