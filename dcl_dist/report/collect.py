"""What a run directory holds for its report, read through the libraries that wrote it: metrics.json and each
artifact's dcl_dist.json, TensorBoard's scalars (EventAccumulator) and its projector's embeddings (the projector's
config protobuf, numpy for the TSV it points to)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from dcl_dist.config import VARIANTS
from dcl_dist.errors import ModelError
from dcl_dist.models.artifact import is_complete, read_meta
from dcl_dist.rundir import BASE, RunDir

PROJECTOR_CONFIG = "projector_config.pbtxt"
"""The file TensorBoard's SummaryWriter.add_embedding writes into a run's folder."""


@dataclass
class Embeddings:
    """An encoder's validation embeddings as the projector holds them (a seeded subset beyond 2000 points)."""

    name: str
    """A phase, or rundir.BASE for the base encoder."""
    vectors: np.ndarray
    """(points, hidden)"""
    point_class_names: list[str]
    step: int
    diagnostics: dict[str, float]
    """silhouette and knn_accuracy over the whole validation split."""


@dataclass
class PhaseRecord:
    name: str
    metrics: dict
    """The artifact's metrics (history, embedding, training, and for ft validation and test)."""
    meta: dict
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """TensorBoard tag without the phase ("loss", "lr", ...) -> (step, value) in step order."""
    embeddings: Embeddings | None = None


@dataclass
class RunRecord:
    run_dir: RunDir
    config: dict
    phases: list[PhaseRecord]
    """The variant's finished phases, in order."""
    missing: list[str]
    """The variant's phases without a complete artifact."""
    base: Embeddings | None

    @property
    def variant(self) -> str:
        return self.config["run"]["variant"]

    @property
    def class_names(self) -> list[str]:
        return self.phases[-1].meta.get("class_names", []) if self.phases else []

    def phase(self, name: str) -> PhaseRecord | None:
        return next((p for p in self.phases if p.name == name), None)


def read_run(root: Path) -> RunRecord:
    """The run directory's record; a ModelError when it is not one."""
    run_dir = RunDir(root)
    if not run_dir.config_file.is_file():
        raise ModelError(
            f"{run_dir.root}: no {run_dir.config_file.name}, so this is not a run directory: give the run.dir of a run"
        )
    config = yaml.safe_load(run_dir.config_file.read_text())
    phases, missing = [], []
    for name in VARIANTS[config["run"]["variant"]]:
        phase_dir = run_dir.phase(name)
        if not is_complete(phase_dir.artifact):
            missing.append(name)
            continue
        meta = read_meta(phase_dir.artifact)
        record = PhaseRecord(name, meta.get("metrics", {}), meta)
        record.scalars = read_scalars(phase_dir.tensorboard, name)
        record.embeddings = read_embeddings(phase_dir.tensorboard, name, record.metrics.get("embedding", {}))
        phases.append(record)
    base_scalars = read_scalars(run_dir.base_tensorboard, BASE)
    diagnostics = {k.removeprefix("embedding_"): v[-1][1] for k, v in base_scalars.items() if "embedding_" in k}
    base = read_embeddings(run_dir.base_tensorboard, BASE, diagnostics)
    return RunRecord(run_dir, config, phases, missing, base)


def read_scalars(log_dir: Path, name: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of one TensorBoard run, namespace `name/` dropped."""
    if not log_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    out = {}
    for tag in events.Tags().get("scalars", []):
        points = sorted((e.step, e.value) for e in events.Scalars(tag))
        out[tag.removeprefix(f"{name}/")] = points
    return out


def read_embeddings(log_dir: Path, name: str, diagnostics: dict) -> Embeddings | None:
    """The last validation embeddings `name` logged to the projector in log_dir, or None."""
    config_file = log_dir / PROJECTOR_CONFIG
    if not config_file.is_file():
        return None
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    config = text_format.Parse(config_file.read_text(), ProjectorConfig())
    found = [e for e in config.embeddings if e.tensor_name.startswith(f"{name}/validation")]
    if not found:
        return None
    entry = found[-1]
    vectors = np.loadtxt(log_dir / entry.tensor_path, delimiter="\t", ndmin=2, dtype=np.float32)
    # one metadata column: TensorBoard writes one label per line, no header
    labels = (log_dir / entry.metadata_path).read_text(encoding="utf-8").splitlines()
    step = int(entry.tensor_name.rpartition(":")[2] or 0)
    return Embeddings(name, vectors, labels, step, dict(diagnostics))
