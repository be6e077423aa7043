"""The layout of a run directory, in one place: every module asks these objects for a path.

<run>/config.yaml             the resolved config
<run>/.lock                   held by the run that uses the directory now (run_lock.py), naming it
<run>/metrics.json            each finished phase's metrics and the final ones
<run>/tb/<phase>/             TensorBoard events of each phase
<run>/tb/base/                the base encoder's validation embeddings (recorded by the variant's first phase)
<run>/report/                 report.html (self-contained) and its figures as PNGs
<run>/stream_counts.json      the counting pass of a streamed train split
<run>/export/<form>/          `dcl-dist export` writes here unless told otherwise
<run>/<phase>/settings.json   the settings the phase was trained with
<run>/<phase>/inputs.json     what identified its data files and base model then (inputs.py)
<run>/<phase>/checkpoints/    resumable checkpoints (checkpoints.py names what is inside)
<run>/<phase>/best/           phase ft: the best validation weights so far
<run>/<phase>/artifact/       the phase's output: a Hugging Face folder + dcl_dist.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TENSORBOARD = "tb"
METRICS_FILE = "metrics.json"
BASE = "base"
"""The name under which the base encoder (before any phase) is recorded: TensorBoard run, report, tags."""


@dataclass(frozen=True)
class PhaseDir:
    """One phase's folder in a run directory, and the phase's place in the run's shared folders."""

    run: Path
    name: str

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    @property
    def root(self) -> Path:
        return self.run / self.name

    @property
    def artifact(self) -> Path:
        return self.root / "artifact"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def settings_file(self) -> Path:
        return self.root / "settings.json"

    @property
    def inputs_file(self) -> Path:
        return self.root / "inputs.json"

    @property
    def tensorboard(self) -> Path:
        """The phase's TensorBoard events: one TensorBoard run per phase, beside the other phases'."""
        return self.run / TENSORBOARD / self.name


@dataclass(frozen=True)
class RunDir:
    """A run directory (run.dir): re-running the same command on it resumes."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str from the config is welcome

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def phase(self, name: str) -> PhaseDir:
        return PhaseDir(self.root, name)

    def export(self, form: str) -> Path:
        return self.root / "export" / form

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def metrics_file(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def stream_counts_file(self) -> Path:
        return self.root / "stream_counts.json"

    @property
    def base_tensorboard(self) -> Path:
        """The base encoder's validation embeddings and diagnostics, as one more TensorBoard run beside the phases'."""
        return self.root / TENSORBOARD / BASE

    @property
    def report(self) -> Path:
        """The run report: report.html and each figure as a PNG."""
        return self.root / "report"

    @property
    def report_file(self) -> Path:
        return self.report / "report.html"
