"""Resumable checkpoints of a DeepSpeed engine: atomic save, listing, load (on another world size through
DeepSpeed's universal form). It calls the engine's own methods and never imports deepspeed (engine.py does).

    <root>/step_00000120/                   complete: DeepSpeed's shards, rank<r>.pt per rank, complete.json
    <root>/.partial-step_00000120/          being written; renamed to its final name once complete
    <root>/step_00000120/universal/         the world-size-independent form, made when another world size resumes
    <root>/latest                           DeepSpeed's own pointer to the newest tag (its zero_to_fp32 reads it)
    <root>/damaged-step_00000120/           a checkpoint found damaged, set aside (never deleted) by resume.find

complete.json records every file each rank wrote, with its size, so that a checkpoint is checked before DeepSpeed
reads it (damage): a truncated, emptied or missing file is named, and the resume falls back to an earlier one.
Each rank's own state (rank<r>.pt: RNG streams, data position) is plain data, loaded with weights_only=True.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcl_dist import dist
from dcl_dist.errors import CheckpointWriteError, TrainingError
from dcl_dist.models.files import json_problem, torch_archive_problem

CHECKPOINT_PREFIX = "step_"
PARTIAL_PREFIX = ".partial-"
COMPLETE_MARKER = "complete.json"
DAMAGED_PREFIX = "damaged-"
"""A checkpoint that cannot be read is renamed to damaged-step_<N> (kept for a look, never deleted)."""
LOOP_FIELDS = {"step": int, "epoch": int, "step_in_epoch": int, "finished": bool, "history": list}
"""The fields of complete.json a resume reads, with their types."""
RANK_STATE_GLOBALS = [np.ndarray(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]
"""What torch.load(weights_only=True) may build besides plain data: numpy's uint32 arrays, for the RNG state in
rank files written before it was stored as a tensor."""
UNIVERSAL = "universal"
"""Sub-folder of a checkpoint that holds its world-size-independent form, made when another world size resumes it."""

log = logging.getLogger(__name__)


def _tag(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _zero_stage(model_engine) -> int:
    return int(model_engine.zero_optimization_stage())


def save(model_engine, root: Path, step: int, state: dict, rank_state: dict, keep_last: int) -> Path:
    """Write a resumable checkpoint atomically; every rank calls it.

    DeepSpeed writes model and optimiser shards into a hidden partial folder, each rank adds its own
    `rank<r>.pt` (RNG states, data position), rank 0 adds `complete.json` (our loop state) and only then
    renames the folder to its final name: a crash at any point leaves the previous checkpoint usable. A write
    that fails (a full disk, a lost permission) on any rank removes the partial folder and raises
    CheckpointWriteError on every rank.
    """
    tag = _tag(step)
    partial_tag = PARTIAL_PREFIX + tag
    partial = root / partial_tag
    final = root / tag
    failure: OSError | None = None
    try:
        if dist.is_main():
            root.mkdir(parents=True, exist_ok=True)
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir()
    except OSError as e:
        failure = e
    if not dist.any_true(failure is not None):
        with _recording_write_errors(model_engine) as (errors, written):
            # a rank whose write fails goes on through DeepSpeed's own collectives (raising there would leave the
            # other ranks waiting in them); the ranks agree on the outcome below
            model_engine.save_checkpoint(str(root), tag=partial_tag, save_latest=False)
        failure = errors[0] if errors else None
        rank_file = partial / f"rank{dist.rank()}.pt"
        try:
            torch.save(_plain(rank_state), rank_file)
        except OSError as e:
            failure = failure or e
        files = dist.all_gather_object(_sizes(partial, [*written, rank_file]) if failure is None else {})
        state = {**state, "files": {str(r): sizes for r, sizes in enumerate(files)}}
    if not dist.any_true(failure is not None) and dist.is_main():
        try:
            _publish(model_engine, root, partial, final, tag, state)
        except OSError as e:
            failure = e
    if dist.any_true(failure is not None):
        if dist.is_main():
            shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointWriteError(_write_failure(root, step, failure))
    if dist.is_main():
        for old in list_complete(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(PARTIAL_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return final


@contextlib.contextmanager
def _recording_write_errors(model_engine) -> Iterator[tuple[list[OSError], list[Path]]]:
    """Within the block, a file write of DeepSpeed's checkpoint engine that fails is recorded, not raised; the
    files it writes are listed."""
    errors: list[OSError] = []
    written: list[Path] = []
    writer = model_engine.checkpoint_engine
    write = writer.save

    def recording_save(state_dict, path):
        written.append(Path(path))
        try:
            return write(state_dict, path)
        except OSError as e:
            errors.append(e)

    writer.save = recording_save
    try:
        yield errors, written
    finally:
        del writer.save  # back to the class's method


def _sizes(folder: Path, files: list[Path]) -> dict[str, int]:
    """{name inside folder: size} of the files this rank wrote (its own view: they are closed, and its own)."""
    return {str(f.relative_to(folder)): f.stat().st_size for f in files}


def _plain(value: Any) -> Any:
    """The rank state as plain data that torch.load(weights_only=True) reads: named tuples become tuples."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _publish(model_engine, root: Path, partial: Path, final: Path, tag: str, state: dict) -> None:
    """Rank 0, once every rank's part is written: mark the checkpoint complete and make it visible."""
    layout = {
        "world_size": dist.world_size(),
        "zero_stage": _zero_stage(model_engine),
        "global_batch_size": model_engine.train_batch_size(),
    }
    (partial / COMPLETE_MARKER).write_text(json.dumps({**state, **layout}, indent=2))
    _fsync_dir(partial)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    # DeepSpeed's own readers (zero_to_fp32, ZeRO-3 weights-only loads) look for this pointer
    (root / "latest.tmp").write_text(tag)
    os.replace(root / "latest.tmp", root / "latest")
    _fsync_dir(root)


def _write_failure(root: Path, step: int, error: OSError | None) -> str:
    """The message of a checkpoint that could not be written: why, and what is still there to resume from."""
    if error is None:
        why = "another rank could not write its part (its log names the file)"
    elif error.strerror:
        why = f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    else:
        why = str(error)
    previous = latest(root)
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint of this phase exists"
    return (
        f"checkpoint step {step} could not be written to {root}: {why}. Nothing partial was left behind and {kept}:"
        " free space (or fix the folder's permissions) and run the same command again to resume"
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_complete(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(CHECKPOINT_PREFIX + "*") if (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def list_folders(root: Path) -> list[Path]:
    """Every checkpoint folder under root, oldest first, complete.json or not (one without it was damaged: a save
    makes the folder visible only once complete.json is in it)."""
    return sorted((p for p in root.glob(CHECKPOINT_PREFIX + "*") if p.is_dir()), key=lambda p: p.name)


def latest(root: Path) -> Path | None:
    found = list_complete(root)
    return found[-1] if found else None


def read_info(path: Path) -> dict:
    """What complete.json records: the loop state, and the world size, ZeRO stage and global batch that wrote it."""
    return json.loads((path / COMPLETE_MARKER).read_text())


def damage(path: Path, world_size: int, rank_state: bool = True) -> str | None:
    """Why this rank cannot resume from checkpoint `path` on `world_size` ranks, or None: complete.json, the
    files DeepSpeed will read on this rank (each listed with its size when written), this rank's own state
    (rank_state False: weights only, as phase ft's best weights are read)."""
    marker = path / COMPLETE_MARKER
    problem = json_problem(marker)
    if problem:
        return problem
    info = read_info(path)
    for key, kind in LOOP_FIELDS.items():
        if not isinstance(info.get(key), kind) or (kind is int and isinstance(info.get(key), bool)):
            return f"{marker} is damaged: '{key}' is {info.get(key)!r}, not {kind.__name__}"
    same_world = info.get("world_size") == world_size
    rank = dist.rank()
    files = info.get("files")
    if isinstance(files, dict):
        # the shared files (rank 0's) and this rank's own; on another world size rank 0 converts them all
        mine = {**files.get("0", {}), **files.get(str(rank), {})} if same_world else {}
        if not same_world and rank == 0:
            mine = {name: size for sizes in files.values() for name, size in sizes.items()}
        for name, size in mine.items():
            if not rank_state and name.startswith("rank"):
                continue
            problem = _file_problem(path / name, size)
            if problem:
                return problem
    else:  # written before the record: every torch file must at least be a complete archive
        for file in sorted(path.glob("*.pt")) if rank == 0 else []:
            problem = torch_archive_problem(file)
            if problem:
                return problem
    if same_world and rank_state:
        try:
            load_rank_state(path)
        except ValueError as e:
            return str(e)
    return None


def _file_problem(file: Path, size: int) -> str | None:
    if not file.is_file():
        return f"{file} is missing"
    now = file.stat().st_size
    if now != size:
        return f"{file} is damaged: {now} bytes, {size} when it was written" + (" (truncated)" if now < size else "")
    return torch_archive_problem(file) if file.suffix == ".pt" else None


def load_rank_state(path: Path) -> dict:
    """This rank's own state (RNG streams, data position) in checkpoint `path`; a ValueError naming the file when
    it is missing, damaged or holds anything but plain data (weights_only=True: it is never trusted to run code)."""
    file = path / f"rank{dist.rank()}.pt"
    if not file.is_file():
        raise ValueError(f"{file} is missing")
    try:
        with torch.serialization.safe_globals(RANK_STATE_GLOBALS):
            return torch.load(file, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{file} is damaged or not plain data ({first})") from None


def set_aside(path: Path) -> Path:
    """Rank 0 renames a damaged checkpoint to damaged-<its name> (never deletes it); every rank gets the new path."""
    moved = None
    if dist.is_main():
        moved = path.with_name(DAMAGED_PREFIX + path.name)
        n = 1
        while moved.exists():
            n += 1
            moved = path.with_name(f"{DAMAGED_PREFIX}{path.name}-{n}")
        os.replace(path, moved)
    moved = dist.broadcast_object(moved)
    dist.barrier()
    return moved


def load(model_engine, path: Path, same_world: bool) -> dict | None:
    """Restore model, optimiser and schedule (and ZeRO shards) from a checkpoint; returns this rank's own state.

    ZeRO partitions the optimiser state by world size, so another world size loads the checkpoint's universal
    form (made here once). The rank state is None then: one rank's RNG streams do not map onto another's.
    """
    if same_world or _zero_stage(model_engine) == 0:
        # stage 0 keeps whole optimiser state in mp_rank_00_model_states.pt, readable by any world size
        _load_native(model_engine, path, load_optimizer=True)
    else:
        _load_universal(model_engine, path)
    if not same_world:
        return None
    try:
        return load_rank_state(path)
    except ValueError as e:  # resume.find checked it: it was damaged since
        raise TrainingError(f"{e}: run the same command again to resume from the checkpoint before it") from None


def load_weights(model_engine, path: Path) -> None:
    """Put a checkpoint's model weights (not its optimiser state) into the engine: phase ft's best weights."""
    _load_native(model_engine, path, load_optimizer=False)


def _load_native(model_engine, path: Path, load_optimizer: bool) -> None:
    with _reading(path):
        model_engine.load_checkpoint(
            str(path.parent),
            tag=path.name,
            load_module_strict=True,
            load_optimizer_states=load_optimizer,
            load_lr_scheduler_states=load_optimizer,
        )


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """DeepSpeed's error on a checkpoint that passed damage() (a file damaged inside, or since) as one message."""
    try:
        yield
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, FileNotFoundError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise TrainingError(
            f"checkpoint {path} could not be read ({type(e).__name__}: {first}): move it away (mv {path}"
            f" {path.with_name(DAMAGED_PREFIX + path.name)}) and run the same command to resume from the one before"
        ) from None


def _load_universal(model_engine, path: Path) -> None:
    tag = to_universal(path).name
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in model_engine.optimizer.param_groups]
    # DeepSpeed reads load_universal from its config at load time only: switched on for this one load, as
    # the same engine later loads native checkpoints (ft's best weights)
    model_engine._config.load_universal_checkpoint = True
    try:
        with _reading(path):
            model_engine.load_checkpoint(
                str(path), tag=tag, load_module_strict=True, load_optimizer_states=True, load_lr_scheduler_states=True
            )
    finally:
        model_engine._config.load_universal_checkpoint = False
    _repair_zero3_universal_load(model_engine, groups)


def _repair_zero3_universal_load(model_engine, groups: list[dict]) -> None:
    """Undo two slips of DeepSpeed 0.19.8's ZeRO-3 universal load; stages 1 and 2 load right.

    It hands one `step` tensor to every group's Adam state, which torch's AdamW then advances once per group and
    step: the no-decay group's bias correction ran a step ahead (measured: the loss drifted by 1e-4 within 3
    steps). And it gives every group the first group's hyperparameters: biases and norms got weight decay (2e-7
    within 3 steps, growing). `groups` holds each group's own values from before the load (our config, which a
    resumed phase shares); the learning rate comes from the restored schedule.
    """
    for group, own in zip(model_engine.optimizer.param_groups, groups):
        group.update(own)
    base = getattr(model_engine.optimizer, "optimizer", model_engine.optimizer)
    for state in base.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def to_universal(path: Path) -> Path:
    """<path>/universal: DeepSpeed's world-size-independent form of a ZeRO checkpoint, converted once by rank 0.

    The conversion (deepspeed.checkpoint.ds_to_universal, in a subprocess) writes a partial folder that is renamed
    when complete, so an interrupted conversion is redone, never half-read. Every rank calls it and gets the path
    or the error.
    """
    out = path / UNIVERSAL
    error = None
    if dist.is_main() and not out.is_dir():
        partial = path / (PARTIAL_PREFIX + UNIVERSAL)
        shutil.rmtree(partial, ignore_errors=True)
        workers = str(max(1, min(8, (os.cpu_count() or 1) // 2)))
        log.info("converting %s to DeepSpeed's universal checkpoint (it was written by another world size)", path)
        command = [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(path),
            "--output_folder",
            str(partial),
            "--inject_missing_state",  # plain nn.Modules carry no universal_checkpoint_info: the defaults apply
            "--num_extract_workers",
            workers,
            "--num_merge_workers",
            workers,
        ]
        proc = subprocess.run(command, capture_output=True, text=True)
        (path / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; we name folders ourselves
        if proc.returncode == 0:
            os.replace(partial, out)
        else:
            error = (
                f"converting {path} for another world size failed: resume it on as many ranks as wrote it (its"
                f" {COMPLETE_MARKER} says world_size), or free space if the disk is full ({' '.join(command)}):\n"
                f"{proc.stderr[-4000:]}"
            )
    error = dist.broadcast_object(error)
    if error is not None:
        raise TrainingError(error)
    return out
