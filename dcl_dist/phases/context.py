"""What the pipeline hands a phase."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcl_dist.config import Config
from dcl_dist.data.splits import Splits
from dcl_dist.resume import Resume
from dcl_dist.rundir import PhaseDir, RunDir

EVAL_BATCH_SIZE_FACTOR = 2
"""Evaluation batches are this many times the training micro-batch (no activations kept for backward)."""


@dataclass
class PhaseContext:
    """A phase's inputs: config, run directory, data, the artifact it starts from and where it resumes."""

    cfg: Config
    run_dir: RunDir
    splits: Splits
    source: str
    """The base model (hub name or folder) or the previous phase's artifact folder."""
    lineage: list[dict] = field(default_factory=list)
    """The phases that made `source`, oldest first (each: phase, artifact, its adapter or None)."""
    resume: Resume | None = None
    """The checkpoint the phase goes on from (resume.find): the engine keeps its ZeRO stage, the loop restores it."""

    def phase_dir(self, phase: str) -> PhaseDir:
        return self.run_dir.phase(phase)

    def eval_batch_size(self, phase: str) -> int:
        return getattr(self.cfg, phase).micro_batch_size_per_rank * EVAL_BATCH_SIZE_FACTOR
