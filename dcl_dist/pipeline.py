"""Variants as lists of phases: the only place that knows the order and passes each artifact to the next.

A run directory remembers the settings each phase was trained with (rundir.PhaseDir.settings_file) and what
identified its inputs (inputs_file: data files, base model): a finished phase is skipped when they match, an
unfinished one resumes from its checkpoint (resume.py: decided here, once, and handed to the phase), and a
mismatch stops with the keys or files that changed rather than mixing two experiments in one directory. Every
phase is checked before the run directory's config.yaml is rewritten, one run at a time holds the directory
(run_lock.py), and a folder with other files is never taken for a run directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable

import yaml

from dcl_dist import dist, engine, inputs, interrupt, resume, run_lock
from dcl_dist.atomic import write_text
from dcl_dist.config import Config, dump_yaml, to_dict
from dcl_dist.data.batch_plan import check_world
from dcl_dist.data.splits import Splits, load_splits
from dcl_dist.errors import ConfigError, DataError, ModelError
from dcl_dist.models.artifact import DAMAGED_FIX, artifact_problems, is_complete, read_meta
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
    saved = _flatten(_read_record(saved_file))
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


def _read_record(path) -> dict:
    """A JSON record of the run directory (settings.json, inputs.json), or a ConfigError naming it if damaged."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        record = e
    if not isinstance(record, dict):
        raise ConfigError(
            [
                f"{path} is damaged ({record if isinstance(record, Exception) else 'not a JSON object'}): it records"
                f" how {path.parent} was trained; delete {path.parent} to train that phase again (later phases"
                " depend on it), or use a new run.dir"
            ]
        )
    return record


def prepare_run_dir(cfg: Config) -> RunDir:
    """Create the run directory, or check that the folder is one (rank 0); every rank gets it, or the error."""
    run_dir = RunDir(cfg.run.dir)
    problem = None
    if dist.is_main():
        try:
            problem = _not_a_run_dir(run_dir)
            run_dir.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            problem = f"'run.dir' {run_dir.root} cannot be written ({e.strerror}): choose a writable folder"
    problem = dist.broadcast_object(problem)  # every rank stops with it (no rank left waiting at a barrier)
    if problem is not None:
        raise ConfigError([problem])
    return run_dir


def _not_a_run_dir(run_dir: RunDir) -> str | None:
    """Why an existing folder must not be used as run.dir (it holds other things than a run), or None."""
    root = run_dir.root
    if not root.is_dir() or not any(root.iterdir()) or run_dir.lock_file.is_file():
        return None
    try:
        config = yaml.safe_load(run_dir.config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        config = None
    if isinstance(config, dict) and set(dataclasses.asdict(Config())) <= set(config):
        return None  # a run directory from before the lock file
    shown = ", ".join(sorted(p.name for p in root.iterdir())[:5])
    return (
        f"'run.dir' {root} is a folder with other files ({shown}, ...), not a dcl_dist run directory: choose a new or"
        " empty folder (a run writes config.yaml, metrics.json, tb/ and one folder per phase there)"
    )


def run_variant(cfg: Config, only_phase: str | None = None, splits: Splits | None = None) -> dict:
    """Run the variant's phases in order (or just `only_phase`), skipping finished ones; returns metrics.json's dict."""
    dist.init()
    check_request(cfg, only_phase)
    run_dir = prepare_run_dir(cfg)
    with run_lock.hold(run_dir):
        return _run_phases(cfg, run_dir, only_phase, splits)


def _run_phases(cfg: Config, run_dir: RunDir, only_phase: str | None, splits: Splits | None) -> dict:
    """run_variant, once the run directory is held: check every phase it holds, then run them in order."""
    phases = cfg.phases()
    inputs_now = check_run_dir(cfg, run_dir, phases[: phases.index(only_phase) + 1] if only_phase else phases)
    engine.check_config_file(cfg, phases)
    if dist.is_main():
        write_text(run_dir.config_file, dump_yaml(cfg))
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
            context = PhaseContext(cfg, run_dir, splits, source, lineage)
            run_phase(cfg, phase, settings, context, inputs_now.get(phase))
        drop_finished_checkpoints(cfg, phase_dir)
        lineage = lineage + [{**read_meta(phase_dir.artifact)["lineage"][-1], "artifact": str(phase_dir.artifact)}]
        source = str(phase_dir.artifact)
        if phase == only_phase:
            break
    metrics = collect_metrics(run_dir, cfg)
    if dist.is_main():
        write_text(run_dir.metrics_file, json.dumps(metrics, indent=2))
    return metrics


def drop_finished_checkpoints(cfg: Config, phase_dir: PhaseDir) -> None:
    """Rank 0 deletes a finished phase's checkpoints/ and best/ unless checkpoint.keep_finished.

    Call only once the phase's artifact is complete: until then its last checkpoint is what a re-run resumes (a
    crash between the two leaves both, and the re-run, which skips the phase, deletes them). Later phases and
    exports read the artifact alone.
    """
    if cfg.checkpoint.keep_finished or not dist.is_main() or not is_complete(phase_dir.artifact):
        return
    dropped = [folder for folder in (phase_dir.checkpoints, phase_dir.best) if folder.exists()]
    for folder in dropped:
        shutil.rmtree(folder, ignore_errors=True)
    if dropped:
        shown = " and ".join(f"{folder.name}/" for folder in dropped)
        log.info("%s: artifact complete, %s deleted (checkpoint.keep_finished: true keeps them)", phase_dir.name, shown)


def check_run_dir(cfg: Config, run_dir: RunDir, phases: tuple[str, ...]) -> dict[str, dict]:
    """Refuse phases of the run directory trained with other settings or on inputs that changed since (before its
    config.yaml is rewritten); returns what identifies each phase's inputs now (rank 0 reads the files)."""
    for phase in phases:
        check_settings(run_dir.phase(phase), phase_settings(cfg, cfg.phases(), phase), run_dir)
    problem, damaged, now = None, None, {}
    if dist.is_main():
        try:
            now = {phase: inputs.identify(inputs.phase_inputs(cfg, phase)) for phase in phases}
            for phase in phases:
                _check_inputs(run_dir.phase(phase), now[phase])
        except ConfigError as e:
            problem = e.problems
        damaged = next((d for phase in phases if (d := _finished_artifact_damage(run_dir.phase(phase)))), None)
    problem, damaged = dist.broadcast_object((problem, damaged))
    if problem is not None:
        raise ConfigError(problem)
    if damaged is not None:
        raise ModelError(damaged)
    return now


def _finished_artifact_damage(phase_dir: PhaseDir) -> str | None:
    """Why a finished phase's artifact cannot be used (a damaged or missing file), or None: a skipped phase is
    checked as a phase after it, predict or export would read it, so that the run does not end as if all were well."""
    artifact = phase_dir.artifact
    if not is_complete(artifact):
        return None
    try:
        problems = artifact_problems(artifact, read_meta(artifact))
    except ModelError as e:
        problems = [str(e).removesuffix(f": {DAMAGED_FIX}")]
    if not problems:
        return None
    return (
        f"{problems[0]}: phase {phase_dir.name} finished earlier, but its artifact is damaged. Move {artifact} away"
        f" (e.g. to {artifact}.damaged) and run the same command: the phase writes it again from its last checkpoint"
        " (or trains again if none is kept)"
    )


def _check_inputs(phase_dir: PhaseDir, now: dict) -> None:
    """A ConfigError when the phase's inputs changed since it was trained; a note when only data.test did."""
    if not phase_dir.inputs_file.is_file():
        return
    refused, noted = inputs.changes(_read_record(phase_dir.inputs_file), now)
    if refused:
        raise inputs.refusal(phase_dir.root, phase_dir.name, refused)
    if noted and is_complete(phase_dir.artifact):
        log.warning(
            "%s; the test metrics of %s (and metrics.json) are of the earlier file: dcl-dist evaluate --run %s"
            " --data <test file> gives the new ones",
            "; ".join(noted),
            phase_dir.artifact,
            phase_dir.run,
        )


def check_request(cfg: Config, only_phase: str | None) -> None:
    """Refuse a --phase outside the variant, and batch sizes this world size cannot make, before any work."""
    phases = cfg.phases()
    if only_phase is not None and only_phase not in phases:
        raise ConfigError([f"--phase {only_phase} is not a phase of variant {cfg.run.variant} ({', '.join(phases)})"])
    problems = [p for phase in phases for p in check_world(cfg, phase, dist.world_size())]
    if problems:
        raise ConfigError(problems)


def run_phase(cfg: Config, phase: str, settings: dict, ctx: PhaseContext, inputs_now: dict | None = None) -> None:
    """Train one phase (afresh, or on from its checkpoint: decided here, once) and update metrics.json."""
    phase_dir = ctx.phase_dir(phase)
    if dist.is_main():
        phase_dir.root.mkdir(parents=True, exist_ok=True)
        write_text(phase_dir.settings_file, json.dumps(settings, indent=2))  # other ranks may be reading it
        if inputs_now is not None:
            write_text(phase_dir.inputs_file, json.dumps(inputs_now, indent=1))
        log.info("%s: starting from %s", phase, ctx.source)
    dist.barrier()
    resume_from = resume.find(phase_dir, dist.world_size())
    ctx = dataclasses.replace(ctx, cfg=resume.keep_global_batch(cfg, phase, resume_from), resume=resume_from)
    ctx = dataclasses.replace(ctx, cfg=fit_micro_batch(ctx, phase))
    PHASES[phase](ctx)
    if dist.is_main():
        write_text(ctx.run_dir.metrics_file, json.dumps(collect_metrics(ctx.run_dir, cfg), indent=2))
