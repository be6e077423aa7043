"""The classification head of phase ft: dropout -> Linear -> activation -> dropout -> Linear (eq. 7)."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class ClassifierHead(nn.Module):
    """(batch, hidden) sentence vectors -> (batch, classes) logits."""

    def __init__(self, hidden: int, head_hidden: int, n_classes: int, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.config = {
            "hidden": hidden,
            "head_hidden": head_hidden,
            "n_classes": n_classes,
            "dropout": dropout,
            "activation": activation,
        }
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(hidden, head_hidden),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Classifier(nn.Module):
    """Encoder + head: token ids -> class logits."""

    def __init__(self, encoder: nn.Module, head: ClassifierHead):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))
