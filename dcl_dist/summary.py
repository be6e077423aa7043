"""The end of a run in a few lines: per phase its time, steps, samples/s, best validation metric and artifact,
and what the run directory holds on disk (the console summary of train, and the report's first table)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dcl_dist.rundir import RunDir

HEADLINE = {"dae": ("loss", min), "cl": ("knn_accuracy", max), "joint": ("knn_accuracy", max)}
"""Each phase's validation metric worth one number (phase ft: its ft.select_metric), and which way is better."""


@dataclass
class PhaseLine:
    phase: str
    seconds: float | None
    steps: int | None
    samples_per_s: float | None
    best: tuple[str, float] | None
    """(metric, best value over the phase's validation history)."""
    artifact: Path


def best_validation(phase: str, metrics: dict) -> tuple[str, float] | None:
    """(metric, best value) over the phase's validation history, None without one."""
    name, better = HEADLINE.get(phase, (metrics.get("select_metric"), max))
    values = [row[name] for row in metrics.get("history", []) if isinstance(row.get(name), (int, float))]
    return (name, better(values)) if name and values else None


def phase_lines(run_dir: RunDir, phases: list[str], metrics: dict) -> list[PhaseLine]:
    """One line per finished phase, from metrics.json's dict (each phase's artifact metrics)."""
    lines = []
    for phase in phases:
        m = metrics.get("phases", {}).get(phase)
        if m is None:
            continue
        training = m.get("training", {})
        seconds, samples = training.get("seconds"), training.get("samples")
        rate = samples / seconds if seconds and samples else None
        best = best_validation(phase, m)
        lines.append(PhaseLine(phase, seconds, m.get("steps"), rate, best, run_dir.phase(phase).artifact))
    return lines


def folder_bytes(path: Path) -> int:
    """Bytes of the files under path (links are not followed: a linked phase belongs to another run)."""
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def disk_usage(run_dir: RunDir, phases: list[str]) -> dict[str, int]:
    """Bytes the run directory holds: in all, and its checkpoints (checkpoints/ and best/) and artifacts."""
    checkpoints = sum(folder_bytes(run_dir.phase(p).checkpoints) + folder_bytes(run_dir.phase(p).best) for p in phases)
    artifacts = sum(folder_bytes(run_dir.phase(p).artifact) for p in phases)
    return {"total": folder_bytes(run_dir.root), "checkpoints": checkpoints, "artifacts": artifacts}


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{s:02d}" if hours else f"{minutes}:{s:02d}"


def rows(lines: list[PhaseLine]) -> list[list[str]]:
    """The table's header and rows as text."""
    out = [["phase", "time", "steps", "samples/s", "best validation", "artifact"]]
    for line in lines:
        out.append(
            [
                line.phase,
                duration(line.seconds),
                "-" if line.steps is None else str(line.steps),
                "-" if line.samples_per_s is None else f"{line.samples_per_s:.1f}",
                f"{line.best[0]} {line.best[1]:.4f}" if line.best else "-",
                str(line.artifact),
            ]
        )
    return out


def disk_line(run_dir: RunDir, usage: dict[str, int]) -> str:
    total, artifacts, kept = (human_bytes(usage[k]) for k in ("total", "artifacts", "checkpoints"))
    return f"run directory {run_dir.root} holds {total}: artifacts {artifacts}, checkpoints {kept}"


def summary_text(run_dir: RunDir, phases: list[str], metrics: dict) -> str:
    """The console summary: the phases' table and the disk line."""
    table = rows(phase_lines(run_dir, phases, metrics))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join([*text, disk_line(run_dir, disk_usage(run_dir, phases))])
