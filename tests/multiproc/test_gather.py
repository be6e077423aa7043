"""dist.all_gather_no_grad on gloo ranks: every rank's rows in rank order, whatever the per-rank sizes (a rank
with none included), dtypes and trailing shapes, gathered in slabs of rows (GLOO_SLAB_ELEMENTS) so that gloo's
flat receive buffer never holds the whole result: as many collectives as slabs, the same on every rank."""

from __future__ import annotations

import math

import pytest
import torch

from multiproc.spawn import run_ranks

pytestmark = pytest.mark.multiproc

CASES = (((5,), torch.float32), ((), torch.int64), ((2, 3), torch.float64))
"""(trailing shape, dtype) of the rows gathered in each case."""


def _rows(rank: int, n: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Rank `rank`'s n rows, each value naming its rank and row."""
    values = torch.arange(n * math.prod(shape), dtype=torch.float64).reshape(n, *shape) + 1000 * rank
    return values.to(dtype)


def _gather(sizes: list[int], slab: int | None) -> list[dict]:
    from dcl_dist import dist

    if slab is not None:
        dist.GLOO_SLAB_ELEMENTS = slab
    out = []
    for shape, dtype in CASES:
        mine = _rows(dist.rank(), sizes[dist.rank()], shape, dtype)
        with dist.counting_collectives() as counts:
            gathered = dist.all_gather_no_grad(mine, sizes)
        out.append({"gathered": gathered, "all_gathers": counts.calls["all_gather"]})
    return out


@pytest.mark.parametrize(
    ("sizes", "slab"),
    [
        ([7, 3], 8),  # 2 ranks x 5 elements a row: 1 row a slab, 7 slabs
        ([4, 0, 9], 40),  # 3 ranks, one with no rows
        ([6, 6], None),  # the default slab: one collective
        ([0, 0], 8),  # nothing anywhere
    ],
)
def test_all_gather_no_grad_in_slabs(sizes, slab, tmp_path):
    from dcl_dist.dist import GLOO_SLAB_ELEMENTS

    results = run_ranks(_gather, len(sizes), tmp_path, sizes, slab)
    for case, (shape, dtype) in enumerate(CASES):
        expected = torch.cat([_rows(r, n, shape, dtype) for r, n in enumerate(sizes)])
        row_elements = len(sizes) * math.prod(shape)
        step = max(1, (slab or GLOO_SLAB_ELEMENTS) // row_elements)
        slabs = math.ceil(max(sizes) / step)
        for rank, by_case in enumerate(results):
            got = by_case[case]
            assert got["gathered"].dtype == dtype and torch.equal(got["gathered"], expected), (rank, shape)
            assert got["all_gathers"] == slabs, (rank, shape, got["all_gathers"])
        if slab is not None and max(sizes) > 0 and shape == (5,):
            assert slabs > 1
