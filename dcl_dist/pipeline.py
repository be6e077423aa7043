"""Variants as lists of phases: the only place that knows the order and passes each artifact to the next.

A run directory remembers the settings each phase was trained with (<phase>/settings.json): a finished
phase is skipped when they match, an unfinished one resumes from its checkpoint, and a mismatch stops
with the keys that changed rather than mixing two experiments in one directory.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from dcl_dist import dist, interrupt
from dcl_dist import engine as ds
from dcl_dist.config import Config, dump_yaml, to_dict
from dcl_dist.data.batch_plan import accumulation_steps, check_world
from dcl_dist.data.splits import Splits, load_splits
from dcl_dist.errors import ConfigError, DataError
from dcl_dist.models.artifact import is_complete, read_meta
from dcl_dist.phases import cl, dae, ft, joint
from dcl_dist.phases.common import PhaseContext

log = logging.getLogger(__name__)

PHASES: dict[str, Callable[[PhaseContext], dict]] = {"dae": dae.run, "cl": cl.run, "ft": ft.run, "joint": joint.run}
SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.json"

PHASE_SECTIONS = {"dae": ["dae"], "cl": ["cl"], "ft": ["ft"], "joint": ["joint", "dae", "cl"]}
"""Config sections whose values shape each phase's result (besides model, data and run.seed)."""


def phase_settings(cfg: Config, phases: tuple[str, ...], upto: str) -> dict:
    """The settings that determine a phase's artifact: the data, the model and every phase up to this one."""
    full = to_dict(cfg)
    data = {k: v for k, v in full["data"].items() if k not in ("num_workers",)}
    out = {"model": full["model"], "data": data, "seed": cfg.run.seed, "phases": list(phases[: phases.index(upto) + 1])}
    for phase in out["phases"]:
        for section in PHASE_SECTIONS[phase]:
            out[section] = full[section]
    if cfg.lora.enabled:  # only then: run directories from before the lora section stay valid
        out["lora"] = full["lora"]
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_settings(phase_dir: Path, settings: dict, run_dir: Path) -> None:
    """Raise a ConfigError naming the changed keys when phase_dir holds work done with other settings."""
    saved_file = phase_dir / SETTINGS_FILE
    if not saved_file.is_file():
        return
    saved = _flatten(json.loads(saved_file.read_text()))
    now = _flatten(json.loads(json.dumps(settings)))
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed[:8])
        raise ConfigError(
            [
                f"{phase_dir} was trained with other settings: {shown}. Use a new run.dir, or delete {phase_dir} to"
                f" train phase {phase_dir.name} again (later phases of {run_dir} depend on it)"
            ]
        )


def keep_saved_global_batch(cfg: Config, phase: str, phase_dir: Path) -> Config:
    """The config a phase resumes with: on another world size it keeps the global batch its checkpoint was written
    with (more or less accumulation), so that every step sees the examples it would have seen."""
    latest = ds.latest_checkpoint(phase_dir / ds.CHECKPOINTS)
    saved = ds.checkpoint_info(latest).get("global_batch_size") if latest is not None else None
    p, world = getattr(cfg, phase), dist.world_size()
    if saved is None or p.global_batch_size is not None:
        return cfg  # an explicit global batch is one of the phase's settings: check_settings compares it
    per_step = p.micro_batch_size_per_rank * world
    if saved == per_step * accumulation_steps(cfg, phase, world):
        return cfg
    if saved % per_step:
        micro = p.micro_batch_size_per_rank
        fits = [str(w) for w in range(1, saved // micro + 1) if saved % (micro * w) == 0]
        raise ConfigError(
            [
                f"{latest} was written with a global batch of {saved} examples, and {world} ranks x"
                f" {phase}.micro_batch_size_per_rank {micro} cannot make it: resume on {' or '.join(fits) or 'other'}"
                " ranks"
            ]
        )
    pinned = copy.deepcopy(cfg)
    getattr(pinned, phase).global_batch_size = saved
    if dist.is_main():
        log.info("%s: keeps its checkpoint's global batch of %d on %d ranks", phase, saved, world)
    return pinned


def collect_metrics(run_dir: Path, cfg: Config) -> dict:
    """metrics.json: each finished phase's metrics (from its artifact), and the final test metrics."""
    out: dict = {"variant": cfg.run.variant, "phases": {}}
    for phase in cfg.phases():
        artifact = run_dir / phase / "artifact"
        if is_complete(artifact):
            out["phases"][phase] = read_meta(artifact).get("metrics", {})
    final = out["phases"].get("ft", {})
    for split in ("validation", "test"):
        if split in final:
            out[split] = {k: v for k, v in final[split].items() if k not in ("per_class", "confusion_matrix")}
    return out


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run directory and write the resolved config (rank 0); every rank gets the path, or the error."""
    run_dir = Path(cfg.run.dir)
    problem = None
    if dist.is_main():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        except OSError as e:
            problem = f"'run.dir' {run_dir} cannot be written ({e.strerror}): choose a writable folder"
    if dist.any_true(problem is not None):  # every rank stops with it (no rank left waiting at a barrier)
        raise ConfigError([problem or f"'run.dir' {run_dir} cannot be written on rank 0: choose a writable folder"])
    return run_dir


def run_variant(cfg: Config, only_phase: str | None = None, splits: Splits | None = None) -> dict:
    """Run the variant's phases in order (or just `only_phase`), skipping finished ones; returns metrics.json's dict."""
    dist.init()
    phases = cfg.phases()
    if only_phase is not None and only_phase not in phases:
        raise ConfigError([f"--phase {only_phase} is not a phase of variant {cfg.run.variant} ({', '.join(phases)})"])
    problems = [p for phase in phases for p in check_world(cfg, phase, dist.world_size())]
    if problems:
        raise ConfigError(problems)
    run_dir = prepare_run_dir(cfg)
    splits = splits or load_splits(cfg)
    if len(splits.classes) < 2 and only_phase != "dae":
        raise DataError(
            f"train split {cfg.data.train} has a single class ({splits.classes[0]}): phase cl cannot contrast classes"
            " and a classifier has nothing to choose from: add examples of other classes (phase dae alone runs"
            " without labels: --phase dae)"
        )
    source, lineage = cfg.model.name_or_path, []
    for phase in phases:
        phase_dir = run_dir / phase
        artifact = phase_dir / "artifact"
        settings = phase_settings(cfg, phases, phase)
        check_settings(phase_dir, settings, run_dir)
        if dist.any_true(interrupt.requested() is not None):  # it came after the previous phase's last step
            raise interrupt.stopped(f"before phase {phase}")
        if is_complete(artifact):
            if dist.is_main():
                log.info("%s: finished earlier (%s), skipped", phase, artifact)
        elif only_phase is not None and phase != only_phase:
            before = ", ".join(phases[: phases.index(only_phase)])
            raise ConfigError(
                [
                    f"--phase {only_phase} needs the artifacts of {before}, and {artifact} does not exist:"
                    f" run --phase {phase} first, or the whole variant without --phase"
                ]
            )
        else:
            if dist.is_main():
                phase_dir.mkdir(parents=True, exist_ok=True)
                # atomically: the other ranks may be reading it in check_settings right now
                (phase_dir / (SETTINGS_FILE + ".tmp")).write_text(json.dumps(settings, indent=2))
                os.replace(phase_dir / (SETTINGS_FILE + ".tmp"), phase_dir / SETTINGS_FILE)
                log.info("%s: starting from %s", phase, source)
            dist.barrier()
            PHASES[phase](
                PhaseContext(keep_saved_global_batch(cfg, phase, phase_dir), run_dir, splits, source, lineage)
            )
            if dist.is_main():
                (run_dir / METRICS_FILE).write_text(json.dumps(collect_metrics(run_dir, cfg), indent=2))
        lineage = lineage + [{**read_meta(artifact)["lineage"][-1], "artifact": str(artifact)}]
        source = str(artifact)
        if phase == only_phase:
            break
    metrics = collect_metrics(run_dir, cfg)
    if dist.is_main():
        (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics
