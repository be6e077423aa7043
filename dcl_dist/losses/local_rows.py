"""What both in-batch losses share: this rank's rows against the gathered global batch, block by block.

Each rank embeds b of the N examples of a global contrastive batch. It gathers every rank's unit vectors (the
columns, (N, hidden)) and computes the loss terms of its own b rows against all N columns: b x N per rank, never
N x N. The terms are taken BLOCK_ELEMENTS at a time, with their gradient, inside one autograd Function, so that
neither a (b, N) matrix nor a graph over one is ever held: beyond the (N, hidden) columns, memory is flat in N.

Which pairs: (i, j) is used when i and j come from different source examples (sample ids): never an example with
itself, nor with one of its imbalance-correction copies, which would be a trivial positive. Without source ids
every example is its own source (only i == j is left out). A loss's normaliser counts the pairs (or anchors) used.

Gradient scale: every rank returns the loss L of the concatenated batch (one scalar all-reduce). Backward hands
this rank's vectors world_size x dL/dx (its rows' share, plus, where the columns carry a gradient, the reduce of
every rank's share through all_gather_with_grad): DeepSpeed's data-parallel average divides by world_size again,
so the parameter gradients equal one process computing L on the concatenated batch
(tests/multiproc/test_local_rows.py, ZeRO 0, 2 and 3 on 1 to 3 ranks).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from dcl_dist import dist

BLOCK_ELEMENTS = 1 << 20
"""Row-by-column entries computed at once (rows per block = BLOCK_ELEMENTS // N): 4 MiB per fp32 block matrix,
of which a loss keeps about six alive; at N = 65,536 that is 16 rows a block."""


@dataclass
class GatheredBatch:
    """This rank's rows and the whole global batch (rank order), as the losses read them."""

    rows: torch.Tensor
    """(b, hidden) this rank's unit vectors, in the autograd graph."""
    columns: torch.Tensor
    """(N, hidden) every rank's unit vectors; in the graph only when the loss needs the columns' gradient."""
    levels: torch.Tensor
    """(N, levels) label ids."""
    sources: torch.Tensor
    """(N,) source example ids: an original and its copies share one."""
    offset: int
    """Global index of this rank's first row."""

    def blocks(self) -> Iterator[tuple[slice, slice]]:
        """(local rows, the same rows' global indices) of each block."""
        b, n = self.rows.shape[0], self.columns.shape[0]
        step = max(1, BLOCK_ELEMENTS // max(n, 1))
        for start in range(0, b, step):
            stop = min(start + step, b)
            yield slice(start, stop), slice(self.offset + start, self.offset + stop)

    def used(self, rows: slice) -> torch.Tensor:
        """(rows, N) bool: the pairs a loss takes (different sources; so never i with itself)."""
        return self.sources[rows, None] != self.sources[None, :]

    def unused(self, rows: slice) -> torch.Tensor:
        """(rows, N) bool: the pairs a loss leaves out (one source), without a second mask to negate used()."""
        return self.sources[rows, None] == self.sources[None, :]


def gather_batch(
    embeddings: torch.Tensor, levels: torch.Tensor, sources: torch.Tensor | None, columns_need_grad: bool
) -> GatheredBatch:
    """Normalise this rank's embeddings (batch, hidden) and gather every rank's, with label levels and sources."""
    rows = nn.functional.normalize(embeddings.float(), dim=-1)
    sizes = dist.all_gather_ints(rows.shape[0])
    if columns_need_grad:
        columns = dist.all_gather_with_grad(rows, sizes)
    else:
        columns = dist.all_gather_no_grad(rows.detach(), sizes)
    levels = levels.to(rows.device).long()
    meta = levels if sources is None else torch.cat([levels, sources.to(levels.device).long()[:, None]], 1)
    meta = dist.all_gather_no_grad(meta, sizes)
    n = columns.shape[0]
    if sources is None:
        all_levels, all_sources = meta, torch.arange(n, device=meta.device)
    else:
        all_levels, all_sources = meta[:, :-1], meta[:, -1]
    return GatheredBatch(rows, columns, all_levels, all_sources, sum(sizes[: dist.rank()]))


class BlockTerms(Protocol):
    """One in-batch loss, as local_rows_loss computes it block by block."""

    def count(self, batch: GatheredBatch) -> int:
        """What the loss averages over (pairs, anchors) in the whole global batch."""
        ...

    def block(
        self, batch: GatheredBatch, rows: slice, global_rows: slice
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(sum of the rows' loss terms, d sum / d rows (B, hidden), d sum / d columns (N, hidden) or None)."""
        ...


def local_rows_loss(batch: GatheredBatch, terms: BlockTerms) -> torch.Tensor:
    """The loss of the global batch (the same on every rank), whose backward is this rank's share (module doc)."""
    return _LocalRowsLoss.apply(batch.rows, batch.columns, batch, terms)


class _LocalRowsLoss(torch.autograd.Function):
    """Forward: the loss over this rank's rows, block by block, and its gradients; backward: those, scaled."""

    @staticmethod
    def forward(ctx, rows, columns, batch: GatheredBatch, terms: BlockTerms):  # noqa: ANN001, ANN205
        total = torch.zeros((), dtype=torch.float64, device=rows.device)
        grad_rows = torch.zeros_like(rows)
        grad_columns = torch.zeros_like(columns) if ctx.needs_input_grad[1] else None
        for local, global_rows in batch.blocks():
            block_sum, block_rows, block_columns = terms.block(batch, local, global_rows)
            total += block_sum
            grad_rows[local] = block_rows
            if grad_columns is not None:
                grad_columns += block_columns
        count = terms.count(batch)
        # world_size x: DeepSpeed averages the ranks' gradients, and each rank holds only its own rows' share
        scale = dist.world_size() / count if count else 0.0
        # in place, here and in backward: no second (b, hidden) or (N, hidden) copy alive at the step's peak
        ctx.save_for_backward(grad_rows.mul_(scale), grad_columns.mul_(scale) if grad_columns is not None else None)
        return (dist.sum_over_ranks(total) / max(count, 1)).float()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # noqa: ANN001, ANN205
        if getattr(ctx, "used", False):  # its saved gradients are scaled in place: a second pass would be wrong
            raise RuntimeError(
                "the in-batch contrastive loss cannot be back-propagated twice (backward with retain_graph=True, "
                "then again): compute the loss again for a second backward"
            )
        ctx.used = True
        grad_rows, grad_columns = ctx.saved_tensors
        return (
            grad_rows.mul_(grad_output),
            grad_columns.mul_(grad_output) if grad_columns is not None else None,
            None,
            None,
        )


def same_source_pairs(sources: torch.Tensor) -> int:
    """Ordered pairs (i, j), i == j included, whose two examples share a source: sum over sources of count^2."""
    _, counts = torch.unique(sources, return_counts=True)
    return int((counts * counts).sum())
