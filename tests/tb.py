"""Reading TensorBoard scalars back in tests."""

from __future__ import annotations

from pathlib import Path


def read_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar tag, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]
