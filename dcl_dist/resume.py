"""What a phase that starts again resumes from, decided once, before the phase builds anything.

The pipeline finds the phase's latest complete checkpoint and reads what wrote it; the decision then travels
down: the global batch into the phase's config (keep_global_batch), the ZeRO stage into engine.initialize, the
checkpoint itself into the loop, which restores each rank's RNG streams and data position only on the world
size that wrote them.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from dcl_dist import checkpoints, dist
from dcl_dist.config import Config
from dcl_dist.data.batch_plan import accumulation_steps
from dcl_dist.errors import ConfigError
from dcl_dist.rundir import PhaseDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """A phase's latest complete checkpoint and what wrote it."""

    checkpoint: Path
    saved: dict
    """Its complete.json: the loop state, and the world size, ZeRO stage and global batch that wrote it."""
    world_size: int
    """The world size that resumes it."""

    @property
    def zero_stage(self) -> int | None:
        """The stage the phase keeps (None from checkpoints older than the record)."""
        return self.saved.get("zero_stage")

    @property
    def global_batch_size(self) -> int | None:
        return self.saved.get("global_batch_size")

    @property
    def written_on(self) -> int | None:
        """The world size that wrote it."""
        return self.saved.get("world_size")

    @property
    def exact(self) -> bool:
        """Same world size: each rank's RNG streams and data position are restored, so the run goes on bit for bit."""
        return self.written_on == self.world_size

    def describe(self) -> str:
        """How the world size and batch compare with the run that wrote the checkpoint, for the log."""
        if self.exact:
            return f"on {self.world_size} ranks as before: RNG and data position restored exactly"
        return (
            f"written on {self.written_on} ranks, now {self.world_size}: the same global batch of"
            f" {self.global_batch_size}, each step the same examples, with new dropout streams"
        )


def find(phase_dir: PhaseDir, world_size: int) -> Resume | None:
    """The phase's resume point, or None when it starts afresh; every rank reads the same files."""
    latest = checkpoints.latest(phase_dir.checkpoints)
    if latest is None:
        return None
    return Resume(latest, checkpoints.read_info(latest), world_size)


def keep_global_batch(cfg: Config, phase: str, resume: Resume | None) -> Config:
    """The config a phase resumes with: on another world size it keeps the global batch its checkpoint was written
    with (more or less accumulation), so that every step sees the examples it would have seen."""
    p = getattr(cfg, phase)
    if resume is None or resume.global_batch_size is None or p.global_batch_size is not None:
        return cfg  # an explicit global batch is one of the phase's settings: the pipeline's check_settings compares it
    saved, world = resume.global_batch_size, resume.world_size
    if p.micro_batch_size_per_rank == "auto":  # phases/batch_size.py then picks a micro-batch that divides it
        pinned = copy.deepcopy(cfg)
        getattr(pinned, phase).global_batch_size = saved
        return pinned
    per_step = p.micro_batch_size_per_rank * world
    if saved == per_step * accumulation_steps(cfg, phase, world):
        return cfg
    if saved % per_step:
        micro = p.micro_batch_size_per_rank
        fits = [str(w) for w in range(1, saved // micro + 1) if saved % (micro * w) == 0]
        raise ConfigError(
            [
                f"{resume.checkpoint} was written with a global batch of {saved} examples, and {world} ranks x"
                f" {phase}.micro_batch_size_per_rank {micro} cannot make it: resume on {' or '.join(fits) or 'other'}"
                " ranks"
            ]
        )
    pinned = copy.deepcopy(cfg)
    getattr(pinned, phase).global_batch_size = saved
    if dist.is_main():
        log.info("%s: keeps its checkpoint's global batch of %d on %d ranks", phase, saved, world)
    return pinned
