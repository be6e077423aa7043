"""Phase ft's loss (eq. 8): softmax cross-entropy of the head's logits."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationLoss(nn.Module):
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits (batch, classes), labels (batch,) -> scalar."""
        return nn.functional.cross_entropy(logits.float(), labels)
