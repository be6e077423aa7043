"""What a phase that starts again resumes from, decided once, before the phase builds anything.

The pipeline finds the phase's latest complete checkpoint that can be read and reads what wrote it; the decision
then travels down: the global batch into the phase's config (keep_global_batch), the ZeRO stage into
engine.initialize, the checkpoint itself into the loop, which restores each rank's RNG streams and data position
only on the world size that wrote them.

A checkpoint that cannot be read (a file truncated, emptied, missing; complete.json damaged) is named in the log
and set aside as damaged-step_<N>, and the phase resumes from the one before; with none left it stops (exit 3)
naming the file. Every rank checks the files it will read and the ranks agree before anything is set aside.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from dcl_dist import checkpoints, dist
from dcl_dist.config import Config
from dcl_dist.data.batch_plan import accumulation_steps
from dcl_dist.errors import ConfigError, TrainingError
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

    def describe(self, restored: bool = True) -> str:
        """How the world size and batch compare with the run that wrote the checkpoint, for the log; restored:
        whether every rank's RNG streams and data position were restored (only on the same world size)."""
        if self.exact and restored:
            return f"on {self.world_size} ranks as before: RNG and data position restored exactly"
        if self.exact:
            return f"on {self.world_size} ranks as before, but without every rank's RNG and data state: new streams"
        return (
            f"written on {self.written_on} ranks, now {self.world_size}: the same global batch of"
            f" {self.global_batch_size}, each step the same examples, with new dropout streams"
        )


def find(phase_dir: PhaseDir, world_size: int) -> Resume | None:
    """The phase's resume point, or None when it starts afresh; every rank calls it and gets the same decision.

    Newest first, the first checkpoint that every rank can read; damaged newer ones are set aside. The best
    weights of phase ft (best/) are checked too: a damaged one stops the phase here rather than at its end.
    """
    found = dist.broadcast_object(checkpoints.list_folders(phase_dir.checkpoints) if dist.is_main() else None)
    damaged: list[tuple[Path, str]] = []
    for path in reversed(found):
        problem = agreed_damage(path, world_size)
        if problem is None:
            for bad, why in damaged:
                moved = checkpoints.set_aside(bad)
                if dist.is_main():
                    log.warning("%s: %s; set aside as %s: resuming from %s", phase_dir.name, why, moved.name, path)
            check_best(checkpoints.latest(phase_dir.best))
            return Resume(path, checkpoints.read_info(path), world_size)
        damaged.append((path, problem))
    if damaged:
        folder = phase_dir.checkpoints
        raise TrainingError(
            f"{damaged[0][1]}: phase {phase_dir.name} has no other complete checkpoint to resume from. Restore the"
            f" file, or move {folder} away (e.g. to {folder}.damaged) and run the same command to train phase"
            f" {phase_dir.name} from its start"
        )
    check_best(checkpoints.latest(phase_dir.best))
    return None


def agreed_damage(path: Path, world_size: int, rank_state: bool = True) -> str | None:
    """checkpoints.damage on every rank, gathered: the first rank's problem, or None when every rank can read it."""
    problems = dist.all_gather_object(checkpoints.damage(path, world_size, rank_state))
    return next((p for p in problems if p is not None), None)


def check_best(best: Path | None) -> None:
    """Phase ft's best weights so far (best/ keeps one checkpoint: there is none to fall back to): exit 3 naming
    the file when they cannot be read."""
    if best is None:
        return
    problem = agreed_damage(best, -1, rank_state=False)  # rank 0 checks the weights; no rank state is read
    if problem is not None:
        raise TrainingError(
            f"{problem}: the best weights of phase {best.parent.parent.name} cannot be read, and no earlier ones are"
            f" kept. Restore the file, or move {best.parent} away (e.g. to {best.parent}.damaged) and run the same"
            " command: the phase then picks its best weights among its evaluations from there on (or ends with its"
            " last weights if it has finished)"
        )


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
