"""Resumable checkpoints of a DeepSpeed engine: atomic save, listing, load (on another world size through
DeepSpeed's universal form). It calls the engine's own methods and never imports deepspeed (engine.py does).

    <root>/step_00000120/                   complete: DeepSpeed's shards, rank<r>.pt per rank, complete.json
    <root>/.partial-step_00000120/          being written; renamed to its final name once complete
    <root>/step_00000120/universal/         the world-size-independent form, made when another world size resumes
    <root>/latest                           DeepSpeed's own pointer to the newest tag (its zero_to_fp32 reads it)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from dcl_dist import dist
from dcl_dist.errors import CheckpointWriteError, TrainingError

CHECKPOINT_PREFIX = "step_"
PARTIAL_PREFIX = ".partial-"
COMPLETE_MARKER = "complete.json"
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
        with _recording_write_errors(model_engine) as errors:
            # a rank whose write fails goes on through DeepSpeed's own collectives (raising there would leave the
            # other ranks waiting in them); the ranks agree on the outcome below
            model_engine.save_checkpoint(str(root), tag=partial_tag, save_latest=False)
        failure = errors[0] if errors else None
        try:
            torch.save(rank_state, partial / f"rank{dist.rank()}.pt")
        except OSError as e:
            failure = failure or e
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
def _recording_write_errors(model_engine) -> Iterator[list[OSError]]:
    """Within the block, a file write of DeepSpeed's checkpoint engine that fails is recorded, not raised."""
    errors: list[OSError] = []
    writer = model_engine.checkpoint_engine
    write = writer.save

    def recording_save(state_dict, path):
        try:
            return write(state_dict, path)
        except OSError as e:
            errors.append(e)

    writer.save = recording_save
    try:
        yield errors
    finally:
        del writer.save  # back to the class's method


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


def latest(root: Path) -> Path | None:
    found = list_complete(root)
    return found[-1] if found else None


def read_info(path: Path) -> dict:
    """What complete.json records: the loop state, and the world size, ZeRO stage and global batch that wrote it."""
    return json.loads((path / COMPLETE_MARKER).read_text())


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
    rank_file = path / f"rank{dist.rank()}.pt"
    return torch.load(rank_file, weights_only=False) if same_world and rank_file.is_file() else None


def load_weights(model_engine, path: Path) -> None:
    """Put a checkpoint's model weights (not its optimiser state) into the engine: phase ft's best weights."""
    _load_native(model_engine, path, load_optimizer=False)


def _load_native(model_engine, path: Path, load_optimizer: bool) -> None:
    model_engine.load_checkpoint(
        str(path.parent),
        tag=path.name,
        load_module_strict=True,
        load_optimizer_states=load_optimizer,
        load_lr_scheduler_states=load_optimizer,
    )


def _load_universal(model_engine, path: Path) -> None:
    tag = to_universal(path).name
    groups = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in model_engine.optimizer.param_groups]
    # DeepSpeed reads load_universal from its config at load time only: switched on for this one load, as
    # the same engine later loads native checkpoints (ft's best weights)
    model_engine._config.load_universal_checkpoint = True
    try:
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
