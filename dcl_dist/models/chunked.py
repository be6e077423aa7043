"""Cached embeddings (GradCache, Gao et al. 2021) in one backward: a micro-batch embedded in chunks whose
activations are not kept, and recomputed one chunk at a time when the loss's gradient reaches them.

GradCache embeds a batch without activations, computes the loss and its gradient with respect to every embedding,
then re-runs each chunk with gradients and back-propagates the cached embedding gradient: one backward() per chunk.
Under DeepSpeed ZeRO every backward() fires the gradient-reduction hooks, so that reduces once per chunk, and ZeRO
2 refuses the second ("Gradient computed twice for this partition", the reason sentence-transformers' cached
losses do not run under DeepSpeed). Here each chunk's forward runs under torch.utils.checkpoint instead: the loss
sees every embedding, the one backward() of the micro-batch reaches each chunk in turn, recomputes its forward
and back-propagates its embedding gradient into the parameters, whose gradients add up across chunks inside that
backward before DeepSpeed's hooks fire once. The cost is GradCache's: one more forward.

Randomness replays exactly: each chunk's recomputation restores the CPU and CUDA random state its forward began
with (preserve_rng_state), so dropout draws the same masks, and the random streams after the step are those of
the chunked forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from dcl_dist import dist


def forward_in_chunks(fn: Callable[..., torch.Tensor], chunk_size: int | None, **inputs: torch.Tensor) -> torch.Tensor:
    """fn(**inputs) computed over chunks of at most chunk_size rows (dim 0) without keeping their activations,
    and concatenated; None (or a batch no larger than a chunk on every rank, or no gradient): in one pass."""
    if chunk_size is None or not torch.is_grad_enabled():
        return fn(**inputs)
    rows = next(iter(inputs.values())).shape[0]
    # every rank runs as many chunks (ZeRO-3 gathers the parameters in each chunk's forward and recomputation,
    # collectively), so a rank with fewer rows cuts smaller ones
    chunks = math.ceil(max(dist.all_gather_ints(rows)) / chunk_size)
    if chunks <= 1:
        return fn(**inputs)
    outputs, unused = [], []
    for part in torch.arange(rows).tensor_split(chunks):
        if len(part) == 0:  # fewer rows than chunks: a stand-in chunk of one row, whose gradient is zero
            unused.append(_checkpointed(fn, {name: value[:1] for name, value in inputs.items()}).sum() * 0.0)
            continue
        outputs.append(_checkpointed(fn, {name: value[part[0] : part[-1] + 1] for name, value in inputs.items()}))
    out = torch.cat(outputs)
    return out + sum(unused) if unused else out


def _checkpointed(fn: Callable[..., torch.Tensor], chunk: dict[str, torch.Tensor]) -> torch.Tensor:
    return checkpoint(fn, use_reentrant=False, preserve_rng_state=True, **chunk)
