"""L_DAE (eq. 1): token cross-entropy of reconstructing the clean sentence, padding ignored."""

from __future__ import annotations

import torch
from torch import nn


class ReconstructionLoss(nn.Module):
    """Mean cross-entropy over the real target tokens; logits come only for those (see TsdaeDecoder)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits (n_tokens, vocab), targets (n_tokens,) -> scalar."""
        return nn.functional.cross_entropy(logits.float(), targets)
