"""Packing: the texts of a padded batch laid end to end in fewer rows, so that no compute goes to padding.

A padded batch (batch, seq) spends every layer's compute on seq x batch slots, of which only the real tokens
matter: 1.64 slots per real token in random SNIPS batches of 16, more with a few long texts. Packed, the texts
fill rows of the same width (first fit, longest first); a block-diagonal attention mask keeps each text to
itself, and each text gets the position ids it would have had alone in a padded row. The model computes the
same token vectors as on the padded batch (up to float rounding: products over other shapes; measured within
1e-6 in fp32, tests/unit/test_packing.py), then they are put back in the padded layout.

Dropout is the exception: its random mask is drawn over the packed tensors, so a packed training step is as
random as a padded one but not the same draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Packing = Literal["auto", "always", "never"]

MIN_SAVING = 0.1
"""packing "auto" packs a batch when that removes at least this share of its slots (padded batches that are
already grouped by length keep their layout, and their exact arithmetic)."""

ROBERTA_STYLE = ("roberta", "xlm-roberta", "camembert")
"""Model types whose positions start after padding_idx (padding_idx + 1 is a text's first position)."""
PACKABLE = ("bert", "electra", *ROBERTA_STYLE)
"""Model types whose position ids may be given and whose attention takes a 4D mask."""


def supports_packing(config) -> bool:
    """Whether a Hugging Face encoder config can run packed rows (absolute positions, position_ids honoured)."""
    absolute = getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
    return config.model_type in PACKABLE and absolute and config._attn_implementation in ("sdpa", "eager")


def mask_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the attention masks a packed row needs: the weights' (eager attention adds the mask to the
    scores), None (bool) for SDPA."""
    return next(model.parameters()).dtype if model.config._attn_implementation == "eager" else None


def first_position(config) -> int:
    """A text's first position id: 0, or padding_idx + 1 for RoBERTa-style models."""
    return (config.pad_token_id or 0) + 1 if config.model_type in ROBERTA_STYLE else 0


@dataclass
class Plan:
    """Where each token of a padded batch sits in the packed rows."""

    rows: int
    width: int
    keep: torch.Tensor
    """(batch, seq) bool: the padded batch's real tokens (a prefix of each row: right padding)."""
    index: torch.Tensor
    """(real tokens,) each real token's slot in the flat (rows x width) packed layout, in keep's row-major order."""
    segments: torch.Tensor
    """(rows, width) the text (padded row) of each slot, -1 for an empty slot."""
    offsets: torch.Tensor
    """(rows, width) each slot's position within its text (0 for an empty slot)."""
    texts: torch.Tensor
    """(rows, texts per row) the texts of each packed row, left to right, -1 for none."""

    def pack(self, values: torch.Tensor, fill: int) -> torch.Tensor:
        """(batch, seq) values of the padded layout -> (rows, width), `fill` in empty slots."""
        out = values.new_full((self.rows * self.width,), fill)
        out[self.index] = values[self.keep]
        return out.view(self.rows, self.width)

    def positions(self, first: int) -> torch.Tensor:
        """(rows, width) position ids: each text's own, from `first` as in a padded row of its own."""
        return self.offsets + first

    def gather(self, states: torch.Tensor) -> torch.Tensor:
        """(rows, width, hidden) packed -> (real tokens, hidden) in keep's row-major order (as states[keep])."""
        return states.reshape(self.rows * self.width, -1)[self.index]

    def unpack(self, states: torch.Tensor) -> torch.Tensor:
        """(rows, width, hidden) packed -> (batch, seq, hidden) padded layout, zeros at padding."""
        out = states.new_zeros((*self.keep.shape, states.shape[-1]))
        out[self.keep] = self.gather(states)
        return out

    def self_attention_mask(self, causal: bool, dtype: torch.dtype | None) -> torch.Tensor:
        """(rows, 1, width, width): a slot sees the slots of its own text (earlier ones only if causal).

        An empty slot sees itself (a query that sees nothing would make NaNs); no real slot sees it. Bool for
        SDPA; additive (0 / most negative) in `dtype` for eager attention.
        """
        seg = self.segments
        allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] >= 0)
        if causal:
            allowed &= torch.ones(self.width, self.width, dtype=torch.bool, device=seg.device).tril()
        allowed |= torch.eye(self.width, dtype=torch.bool, device=seg.device)
        return _as_mask(allowed[:, None], dtype)

    def cross_attention_mask(self, dtype: torch.dtype | None) -> torch.Tensor:
        """(rows, 1, width, texts per row): a slot sees its own text's memory slot (an empty slot the first)."""
        allowed = self.segments[:, :, None] == self.texts[:, None, :]
        allowed[:, :, 0] |= self.segments < 0
        return _as_mask(allowed[:, None], dtype)


def _as_mask(allowed: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def plan(keep: torch.Tensor, packing: Packing) -> Plan | None:
    """The packing of a right-padded batch whose real tokens are `keep` (batch, seq), or None to keep it padded.

    Rows are as wide as the batch's longest text. "auto" packs only when that removes at least MIN_SAVING of
    the slots. The layout is worked out on the host (one read of the lengths), from the lengths alone, so it is
    the same on every run of the same batch.
    """
    if packing == "never" or keep.shape[0] < 2:
        return None
    lengths = keep.sum(1).tolist()
    width = keep.shape[1]
    row_of, start_of, rows = _first_fit(lengths, width)
    if packing == "auto" and rows * width > (1 - MIN_SAVING) * keep.numel():
        return None
    return _layout(keep, lengths, row_of, start_of, rows, width)


def _first_fit(lengths: list[int], width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """First fit, longest first: (each text's row, its first slot in that row, how many rows)."""
    n = len(lengths)
    room = np.full(n, width, dtype=np.int64)
    row_of = np.zeros(n, dtype=np.int64)
    start_of = np.zeros(n, dtype=np.int64)
    rows = 0
    for text in np.argsort(-np.asarray(lengths), kind="stable"):
        length = lengths[text]
        fits = np.flatnonzero(room[:rows] >= length)
        row = int(fits[0]) if fits.size else rows
        rows = max(rows, row + 1)
        row_of[text], start_of[text] = row, width - room[row]
        room[row] -= length
    return row_of, start_of, rows


def _layout(keep: torch.Tensor, lengths: list[int], row_of, start_of, rows: int, width: int) -> Plan:
    n = len(lengths)
    length_of = np.asarray(lengths, dtype=np.int64)
    text_of_token = np.repeat(np.arange(n), length_of)
    offset_in_text = np.arange(int(length_of.sum())) - np.repeat(np.cumsum(length_of) - length_of, length_of)
    index = row_of[text_of_token] * width + start_of[text_of_token] + offset_in_text
    segments = np.full(rows * width, -1, dtype=np.int64)
    offsets = np.zeros(rows * width, dtype=np.int64)
    segments[index], offsets[index] = text_of_token, offset_in_text
    per_row = np.bincount(row_of[length_of > 0], minlength=rows)
    texts = np.full((rows, max(1, int(per_row.max(initial=0)))), -1, dtype=np.int64)
    filled = np.zeros(rows, dtype=np.int64)
    for text in np.lexsort((start_of, row_of)):  # by row, then left to right
        if length_of[text]:
            texts[row_of[text], filled[row_of[text]]] = text
            filled[row_of[text]] += 1
    device = keep.device

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device, non_blocking=True)

    return Plan(
        rows=rows,
        width=width,
        keep=keep,
        index=tensor(index),
        segments=tensor(segments.reshape(rows, width)),
        offsets=tensor(offsets.reshape(rows, width)),
        texts=tensor(texts),
    )
