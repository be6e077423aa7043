"""Variants as lists of phases: the only place that knows the order and passes each artifact to the next.

A run directory remembers the settings each phase was trained with (rundir.PhaseDir.settings_file): a
finished phase is skipped when they match, an unfinished one resumes from its checkpoint (resume.py: decided
here, once, and handed to the phase), and a mismatch stops with the keys that changed rather than mixing two
experiments in one directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable

from dcl_dist import dist, interrupt, resume
from dcl_dist.config import Config, dump_yaml, to_dict
from dcl_dist.data.batch_plan import check_world
from dcl_dist.data.splits import Splits, load_splits
from dcl_dist.errors import ConfigError, DataError
from dcl_dist.models.artifact import is_complete, read_meta
from dcl_dist.phases import cl, dae, ft, joint
from dcl_dist.phases.batch_size import fit_micro_batch
from dcl_dist.phases.context import PhaseContext
from dcl_dist.rundir import PhaseDir, RunDir

log = logging.getLogger(__name__)

PHASES: dict[str, Callable[[PhaseContext], dict]] = {"dae": dae.run, "cl": cl.run, "ft": ft.run, "joint": joint.run}

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


def check_settings(phase_dir: PhaseDir, settings: dict, run_dir: RunDir) -> None:
    """Raise a ConfigError naming the changed keys when phase_dir holds work done with other settings."""
    saved_file = phase_dir.settings_file
    if not saved_file.is_file():
        return
    saved = _flatten(json.loads(saved_file.read_text()))
    now = _flatten(json.loads(json.dumps(settings)))
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed[:8])
        raise ConfigError(
            [
                f"{phase_dir.root} was trained with other settings: {shown}. Use a new run.dir, or delete"
                f" {phase_dir.root} to train phase {phase_dir.name} again (later phases of {run_dir.root} depend on it)"
            ]
        )


def collect_metrics(run_dir: RunDir, cfg: Config) -> dict:
    """metrics.json: each finished phase's metrics (from its artifact), and the final test metrics."""
    out: dict = {"variant": cfg.run.variant, "phases": {}}
    for phase in cfg.phases():
        artifact = run_dir.phase(phase).artifact
        if is_complete(artifact):
            out["phases"][phase] = read_meta(artifact).get("metrics", {})
    final = out["phases"].get("ft", {})
    for split in ("validation", "test"):
        if split in final:
            out[split] = {k: v for k, v in final[split].items() if k not in ("per_class", "confusion_matrix")}
    return out


def prepare_run_dir(cfg: Config) -> RunDir:
    """Create the run directory and write the resolved config (rank 0); every rank gets it, or the error."""
    run_dir = RunDir(cfg.run.dir)
    problem = None
    if dist.is_main():
        try:
            run_dir.root.mkdir(parents=True, exist_ok=True)
            run_dir.config_file.write_text(dump_yaml(cfg))
        except OSError as e:
            problem = f"'run.dir' {run_dir.root} cannot be written ({e.strerror}): choose a writable folder"
    if dist.any_true(problem is not None):  # every rank stops with it (no rank left waiting at a barrier)
        raise ConfigError(
            [problem or f"'run.dir' {run_dir.root} cannot be written on rank 0: choose a writable folder"]
        )
    return run_dir


def run_variant(cfg: Config, only_phase: str | None = None, splits: Splits | None = None) -> dict:
    """Run the variant's phases in order (or just `only_phase`), skipping finished ones; returns metrics.json's dict."""
    dist.init()
    phases = cfg.phases()
    check_request(cfg, only_phase)
    run_dir = prepare_run_dir(cfg)
    splits = splits or load_splits(cfg)
    if len(splits.class_names) < 2 and only_phase != "dae":
        raise DataError(
            f"train split {cfg.data.train} has a single class ({splits.class_names[0]}): phase cl cannot contrast"
            " classes and a classifier has nothing to choose from: add examples of other classes (phase dae alone"
            " runs without labels: --phase dae)"
        )
    source, lineage = cfg.model.name_or_path, []
    for phase in phases:
        phase_dir = run_dir.phase(phase)
        settings = phase_settings(cfg, phases, phase)
        check_settings(phase_dir, settings, run_dir)
        if dist.any_true(interrupt.requested() is not None):  # it came after the previous phase's last step
            raise interrupt.stopped(f"before phase {phase}")
        if is_complete(phase_dir.artifact):
            if dist.is_main():
                log.info("%s: finished earlier (%s), skipped", phase, phase_dir.artifact)
        elif only_phase is not None and phase != only_phase:
            before = ", ".join(phases[: phases.index(only_phase)])
            raise ConfigError(
                [
                    f"--phase {only_phase} needs the artifacts of {before}, and {phase_dir.artifact} does not exist:"
                    f" run --phase {phase} first, or the whole variant without --phase"
                ]
            )
        else:
            run_phase(cfg, phase, settings, PhaseContext(cfg, run_dir, splits, source, lineage))
        lineage = lineage + [{**read_meta(phase_dir.artifact)["lineage"][-1], "artifact": str(phase_dir.artifact)}]
        source = str(phase_dir.artifact)
        if phase == only_phase:
            break
    metrics = collect_metrics(run_dir, cfg)
    if dist.is_main():
        run_dir.metrics_file.write_text(json.dumps(metrics, indent=2))
    return metrics


def check_request(cfg: Config, only_phase: str | None) -> None:
    """Refuse a --phase outside the variant, and batch sizes this world size cannot make, before any work."""
    phases = cfg.phases()
    if only_phase is not None and only_phase not in phases:
        raise ConfigError([f"--phase {only_phase} is not a phase of variant {cfg.run.variant} ({', '.join(phases)})"])
    problems = [p for phase in phases for p in check_world(cfg, phase, dist.world_size())]
    if problems:
        raise ConfigError(problems)


def run_phase(cfg: Config, phase: str, settings: dict, ctx: PhaseContext) -> None:
    """Train one phase (afresh, or on from its checkpoint: decided here, once) and update metrics.json."""
    phase_dir = ctx.phase_dir(phase)
    if dist.is_main():
        phase_dir.root.mkdir(parents=True, exist_ok=True)
        # atomically: the other ranks may be reading it in check_settings right now
        written = phase_dir.settings_file.with_name(phase_dir.settings_file.name + ".tmp")
        written.write_text(json.dumps(settings, indent=2))
        os.replace(written, phase_dir.settings_file)
        log.info("%s: starting from %s", phase, ctx.source)
    dist.barrier()
    resume_from = resume.find(phase_dir, dist.world_size())
    ctx = dataclasses.replace(ctx, cfg=resume.keep_global_batch(cfg, phase, resume_from), resume=resume_from)
    ctx = dataclasses.replace(ctx, cfg=fit_micro_batch(ctx, phase))
    PHASES[phase](ctx)
    if dist.is_main():
        ctx.run_dir.metrics_file.write_text(json.dumps(collect_metrics(ctx.run_dir, cfg), indent=2))
