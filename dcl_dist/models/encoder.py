"""The sentence encoder: a Hugging Face backbone, pooling, then Dense(hidden, hidden, tanh) layers (Fig. 1)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel

from dcl_dist.models import packing as packing_


class Dense(nn.Module):
    """Linear + tanh; named `linear` like sentence-transformers' Dense, so its weights load there unchanged."""

    def __init__(self, size: int):
        super().__init__()
        self.linear = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x))


def pool(token_states: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden): mean over real tokens, or the first token."""
    if mode == "cls":
        return token_states[:, 0]
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    return (token_states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """backbone -> pooling -> dense layers: (batch, seq) token ids -> (batch, hidden) sentence vectors."""

    def __init__(self, backbone: nn.Module, pooling: str = "mean", n_dense: int = 0, packing: str = "auto"):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.dense = nn.ModuleList(Dense(self.hidden_size) for _ in range(n_dense))
        self.packing = packing
        """model.packing: auto, always or never (models/packing.py)."""
        _freeze_pooler(backbone)

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def add_dense(self) -> None:
        """Append one Dense layer (phase 1's bottleneck, phase 2's clustering layer)."""
        self.dense.append(Dense(self.hidden_size).to(next(self.backbone.parameters()).device))

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return pool(self.token_states(input_ids, attention_mask), attention_mask, self.pooling)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) right-padded token ids -> (batch, seq, hidden), computed packed where that saves work."""
        config = self.backbone.config
        plan = packing_.plan(attention_mask.bool(), self.packing) if packing_.supports_packing(config) else None
        if plan is None:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states = self.backbone(
            input_ids=plan.pack(input_ids, config.pad_token_id or 0),
            attention_mask=plan.self_attention_mask(causal=False, dtype=packing_.mask_dtype(self.backbone)),
            position_ids=plan.positions(packing_.first_position(config)),
        ).last_hidden_state
        return plan.unpack(states)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Sentence vectors after the first `depth` dense layers (all by default)."""
        x = self.pooled(input_ids, attention_mask)
        for layer in self.dense[:depth]:
            x = layer(x)
        return x


def _freeze_pooler(backbone: nn.Module) -> None:
    # BERT-style backbones carry a pooler (dense + tanh on [CLS]) that neither pooling mode uses; frozen, it
    # keeps its pretrained values and takes no optimiser state.
    pooler = getattr(backbone, "pooler", None)
    if isinstance(pooler, nn.Module):
        for p in pooler.parameters():
            p.requires_grad_(False)


def load_backbone(name_or_path: str, attn_implementation: str = "sdpa") -> nn.Module:
    """A Hugging Face encoder from the hub or a folder."""
    try:
        return AutoModel.from_pretrained(name_or_path, attn_implementation=attn_implementation)
    except ValueError as e:
        if "attn_implementation" in str(e) or "sdpa" in str(e).lower():
            return AutoModel.from_pretrained(name_or_path, attn_implementation="eager")
        raise
