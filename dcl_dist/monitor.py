"""Watching a run, on rank 0 only: TensorBoard events (one TensorBoard run per phase, tags namespaced by phase),
the embedding projector, and a progress bar."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dcl_dist import dist
from dcl_dist.config import Config
from dcl_dist.rundir import PhaseDir
from dcl_dist.seeds import validation_subset_rng

PROJECTOR_MAX_POINTS = 2000
"""Validation embeddings shown in TensorBoard's projector (a seeded subset beyond this)."""


class Monitor:
    """A phase's TensorBoard scalars and its tqdm bar (each as logging.* asks)."""

    def __init__(self, phase_dir: PhaseDir, cfg: Config, total_steps: int, first_step: int):
        self.phase = phase_dir.name
        self.writer = None
        self.bar = None
        if not dist.is_main():
            return
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops the events a crashed run wrote after the checkpoint we resume from (first_step, whose
            # own events were written before its checkpoint, stays)
            self.writer = SummaryWriter(str(phase_dir.tensorboard), purge_step=first_step + 1 if first_step else None)
        if cfg.logging.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=first_step, desc=self.phase, dynamic_ncols=True)

    def scalars(self, values: dict[str, float | None], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(f"{self.phase}/{k}", v, step)

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()


def log_embeddings(
    tensorboard: Path,
    name: str,
    cfg: Config,
    step: int,
    vectors: torch.Tensor,
    point_class_names: list[str],
    scalars: dict[str, float],
) -> None:
    """An encoder's validation embeddings (projector, each point named by its class) and diagnostics, on rank 0.

    tensorboard: the phase's TensorBoard run (PhaseDir.tensorboard), or RunDir.base_tensorboard for the base encoder;
    name: the phase (or rundir.BASE), the tags' namespace.
    """
    if not dist.is_main() or not cfg.logging.tensorboard:
        return
    from torch.utils.tensorboard import SummaryWriter

    phase = name
    keep = validation_subset_rng(cfg.run.seed).permutation(len(point_class_names))[:PROJECTOR_MAX_POINTS]
    keep.sort()
    with SummaryWriter(str(tensorboard)) as writer:
        for k, v in scalars.items():
            if math.isfinite(v):
                writer.add_scalar(f"{phase}/embedding_{k}", v, step)
        writer.add_embedding(
            vectors[keep], metadata=[point_class_names[i] for i in keep], tag=f"{phase}/validation", global_step=step
        )
