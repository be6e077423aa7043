"""The batch arithmetic: global batch = micro-batch per rank x world size x accumulation steps, and how an
epoch's order is cut into each rank's micro-batches."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from dcl_dist.config import Config, PhaseConfig


@dataclass(frozen=True)
class BatchPlan:
    """How an epoch's items become optimiser steps: global batch = micro x world x accumulation."""

    micro: int
    world: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        return self.micro * self.world * self.accumulation

    def steps(self, n_items: int) -> int:
        """Optimiser steps per epoch; the last global batch is filled up from the epoch's start."""
        return math.ceil(n_items / self.global_batch)

    def micro_batches(
        self, order: list[int], rank: int, start_step: int = 0, steps: int | None = None
    ) -> Iterator[list[int]]:
        """This rank's micro-batches of the epoch from `start_step` on, accumulation steps in order.

        `steps` fixes the epoch's length (default: enough to cover the order once).
        """
        n, size = len(order), self.global_batch
        for step in range(start_step, self.steps(n) if steps is None else steps):
            chunk = [order[i % n] for i in range(step * size, (step + 1) * size)]
            for a in range(self.accumulation):
                start = (a * self.world + rank) * self.micro
                yield chunk[start : start + self.micro]


def check_world(cfg: Config, phase: str, world_size: int) -> list[str]:
    """Problems with a phase's batch sizes at this world size (known only once the launcher has started)."""
    p: PhaseConfig = getattr(cfg, phase)
    if p.micro_batch_size_per_rank == "auto":
        if p.global_batch_size is not None and p.global_batch_size % world_size:
            return [
                f"'{phase}.global_batch_size' ({p.global_batch_size}) is not divisible by the world size"
                f" ({world_size}), which micro_batch_size_per_rank: auto needs: use a multiple of {world_size}"
            ]
        return []  # phases/batch_size.py picks a micro-batch that divides the global batch
    per_step = p.micro_batch_size_per_rank * world_size
    if p.global_batch_size is not None and p.global_batch_size % per_step:
        lower = max(per_step, p.global_batch_size // per_step * per_step)
        return [
            f"'{phase}.global_batch_size' ({p.global_batch_size}) is not divisible by micro_batch_size_per_rank"
            f" ({p.micro_batch_size_per_rank}) x world size ({world_size}) = {per_step}:"
            f" use {lower} or {lower + per_step}, or change micro_batch_size_per_rank"
        ]
    return []


def accumulation_steps(cfg: Config, phase: str, world_size: int) -> int:
    """Gradient accumulation steps of a phase: global batch / (micro batch x world size)."""
    p: PhaseConfig = getattr(cfg, phase)
    if p.global_batch_size is None:
        return 1
    return max(1, p.global_batch_size // (p.micro_batch_size_per_rank * world_size))
