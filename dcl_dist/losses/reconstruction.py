"""L_DAE (eq. 1): token cross-entropy of reconstructing the clean sentence, padding ignored."""

from __future__ import annotations

import torch
from torch import nn


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (n_tokens, vocab), targets (n_tokens,) -> per-token cross-entropy (n_tokens,), in fp32."""
    return nn.functional.cross_entropy(logits.float(), targets, reduction="none")


class ReconstructionLoss(nn.Module):
    """Mean token cross-entropy over the real target tokens."""

    def forward(self, token_losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """token_losses (batch, seq) with 0 at padding, labels (batch, seq) with -100 at padding -> scalar."""
        return token_losses.sum() / (labels != -100).sum().clamp(min=1)
