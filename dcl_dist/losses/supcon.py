"""Supervised contrastive loss (Khosla et al. 2020, L_out) over the all-gathered global batch."""

from __future__ import annotations

import torch
from torch import nn

from dcl_dist import dist


def supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """z (batch, hidden), labels (batch,) -> mean over anchors with a positive of
    -mean over its positives p of log(exp(sim(a, p) / T) / sum over k != a of exp(sim(a, k) / T))."""
    z = nn.functional.normalize(z.float(), dim=-1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positive.sum(1)
    has_positive = counts > 0
    if not has_positive.any():
        return z.sum() * 0.0
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(1)[has_positive] / counts[has_positive]
    return per_anchor.mean()


class SupConLoss(nn.Module):
    """SupCon on the gathered batch; positives share the finest label (level 0). The same loss on every rank."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """embeddings (batch, hidden), levels (batch, levels) of this rank -> scalar."""
        z = dist.all_gather_with_grad(embeddings.float())
        return supcon(z, dist.all_gather_no_grad(levels)[:, 0], self.temperature)
