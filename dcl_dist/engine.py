"""DeepSpeed: the only module that imports deepspeed.

Builds the DeepSpeed config from a shipped template (configs/deepspeed/zero<stage>.json) with its "auto"
values filled from our config, wraps a model in an engine, writes checkpoints atomically and resumes them
(on another world size through DeepSpeed's universal checkpoint), and gathers ZeRO-3-partitioned parameters
for export.
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
from typing import Any

import deepspeed
import torch

from dcl_dist import dist
from dcl_dist.config import Config, PhaseConfig
from dcl_dist.data.batch_plan import accumulation_steps
from dcl_dist.errors import CheckpointWriteError

TEMPLATES = Path(__file__).resolve().parent / "deepspeed_templates"
"""configs/deepspeed, linked into the package so that an installed package finds it too."""

CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step_"
PARTIAL_PREFIX = ".partial-"
COMPLETE_MARKER = "complete.json"
UNIVERSAL = "universal"
"""Sub-folder of a checkpoint that holds its world-size-independent form, made when another world size resumes it."""

logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
log = logging.getLogger(__name__)


def resolve_precision(choice: str) -> str:
    """fp32, bf16 or fp16 for this machine: auto is bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU."""
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _template(cfg: Config) -> dict:
    ds = cfg.deepspeed
    if ds.config_file is not None:
        path = Path(ds.config_file)
    else:
        suffix = "_offload" if ds.offload != "none" else ""
        path = TEMPLATES / f"zero{ds.zero_stage}{suffix}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _fill(node: Any, values: dict[str, Any], path: str = "") -> Any:
    """Replace every "auto" leaf by values[its dotted path]."""
    if isinstance(node, dict):
        return {k: _fill(v, values, f"{path}.{k}" if path else k) for k, v in node.items()}
    if node == "auto":
        if path not in values:
            raise ValueError(f"DeepSpeed config: no value known for 'auto' at {path}: give a number in the JSON")
        return values[path]
    return node


def deepspeed_config(cfg: Config, phase: str, world_size: int, total_steps: int, hidden_size: int) -> dict:
    """The DeepSpeed config of one phase: template + batch sizes, optimiser, schedule, precision, ZeRO stage."""
    p: PhaseConfig = getattr(cfg, phase)
    accumulation = accumulation_steps(cfg, phase, world_size)
    precision = resolve_precision(cfg.deepspeed.precision)
    warmup = max(1, round(p.warmup_ratio * total_steps))
    values = {
        "train_batch_size": p.micro_batch_size_per_rank * world_size * accumulation,
        "train_micro_batch_size_per_gpu": p.micro_batch_size_per_rank,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": p.max_grad_norm,
        "optimizer.params.lr": p.lr,
        "optimizer.params.weight_decay": p.weight_decay,
        "scheduler.params.warmup_max_lr": p.lr,
        "scheduler.params.warmup_num_steps": warmup,
        "scheduler.params.total_num_steps": max(total_steps, warmup + 1),
        "bf16.enabled": precision == "bf16",
        "fp16.enabled": precision == "fp16",
        # HF Trainer's ZeRO-3 rules of thumb, in the model's hidden size
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    out = _fill(_template(cfg), values)
    if cfg.deepspeed.config_file is None:
        out.setdefault("zero_optimization", {})["stage"] = cfg.deepspeed.zero_stage
    if not torch.cuda.is_available():
        out["zero_force_ds_cpu_optimizer"] = False  # torch's AdamW is the CPU optimiser here
    return out


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: with weight decay, and without (biases, norms)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def initialize(model: torch.nn.Module, cfg: Config, phase: str, total_steps: int, hidden_size: int):
    """Wrap `model` in a DeepSpeed engine (optimiser and schedule from the config); every rank calls it.

    A phase that resumes keeps the ZeRO stage its checkpoint was written with, whatever the world size: the
    optimiser state is laid out by stage, and DeepSpeed converts it between world sizes, not between stages.
    """
    dist.init()
    if not torch.cuda.is_available():
        # DeepSpeed would compile a shared-memory all-reduce for CPU ranks (a minute, once per machine); gloo's
        # own collectives are what the CPU runs (tests, quickstart) need.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ds_config = deepspeed_config(cfg, phase, dist.world_size(), total_steps, hidden_size)
    configured = ds_config.get("zero_optimization", {}).get("stage", 0)
    stage = configured
    if dist.world_size() == 1 and stage > 0 and cfg.deepspeed.offload == "none" and cfg.deepspeed.config_file is None:
        # one rank has nothing to partition: ZeRO would only add bucket copies (40% of a CPU step, measured)
        stage = 0
        if dist.is_main():
            log.info("%s: one rank, so ZeRO stage %d partitions nothing: running stage 0", phase, configured)
    resume = latest_checkpoint(Path(cfg.run.dir) / phase / CHECKPOINTS)
    saved_stage = checkpoint_info(resume).get("zero_stage") if resume is not None else None
    if saved_stage is not None and saved_stage != stage:
        stage = saved_stage
        if dist.is_main():
            log.info("%s: %s was written with ZeRO stage %d: the phase keeps that stage", phase, resume, stage)
    if stage != configured:
        ds_config["zero_optimization"] = (
            {**ds_config.get("zero_optimization", {}), "stage": stage} if stage else {"stage": 0}
        )
    groups = [g for g in _param_groups(model, getattr(cfg, phase).weight_decay) if g["params"]]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    if zero_stage(engine) == 0 and resolve_precision(cfg.deepspeed.precision) == "fp32":
        engine.clip_fp32_gradients = lambda: _clip_fp32_gradients(engine)
    if dist.world_size() == 1 and zero_stage(engine) == 0:
        # one rank has nothing to reduce, but DeepSpeed's backward still flattens, "all-reduces" and copies back
        # every gradient: 20% of an ft step of MiniLM on the CPU (measured: backward 127 -> 81 ms)
        engine.enable_backward_allreduce = False
    return engine


def learning_rate(engine) -> float:
    return float(engine.get_lr()[0])


def _clip_fp32_gradients(engine) -> None:
    """Stage 0 in fp32: clip with PyTorch's multi-tensor kernels and keep the norm for the logs. DeepSpeed's own
    clip here loops over the parameters in Python (25 ms of a 475 ms MiniLM dae step on the CPU) and drops
    the norm it computed."""
    params = [p for p in engine.module.parameters() if p.grad is not None]
    engine._global_grad_norm = torch.nn.utils.clip_grad_norm_(params, engine.gradient_clipping(), foreach=True)


def grad_norm(engine) -> float | None:
    """The global gradient norm of the last optimiser step, before clipping (None where DeepSpeed keeps none)."""
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    return float(norm.item() if torch.is_tensor(norm) else norm)


def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints: <root>/step_00000120/ once complete; written under <root>/.partial-step_00000120/ first.


def _tag(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def save_checkpoint(engine, root: Path, step: int, state: dict, rank_state: dict, keep_last: int) -> Path:
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
        with _recording_write_errors(engine) as errors:
            # a rank whose write fails goes on through DeepSpeed's own collectives (raising there would leave the
            # other ranks waiting in them); the ranks agree on the outcome below
            engine.save_checkpoint(str(root), tag=partial_tag, save_latest=False)
        failure = errors[0] if errors else None
        try:
            torch.save(rank_state, partial / f"rank{dist.rank()}.pt")
        except OSError as e:
            failure = failure or e
    if not dist.any_true(failure is not None) and dist.is_main():
        try:
            _publish(engine, root, partial, final, tag, state)
        except OSError as e:
            failure = e
    if dist.any_true(failure is not None):
        if dist.is_main():
            shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointWriteError(_write_failure(root, step, failure))
    if dist.is_main():
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(PARTIAL_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return final


@contextlib.contextmanager
def _recording_write_errors(engine) -> Iterator[list[OSError]]:
    """Within the block, a file write of DeepSpeed's checkpoint engine that fails is recorded, not raised."""
    errors: list[OSError] = []
    writer = engine.checkpoint_engine
    save = writer.save

    def recording_save(state_dict, path):
        try:
            return save(state_dict, path)
        except OSError as e:
            errors.append(e)

    writer.save = recording_save
    try:
        yield errors
    finally:
        del writer.save  # back to the class's method


def _publish(engine, root: Path, partial: Path, final: Path, tag: str, state: dict) -> None:
    """Rank 0, once every rank's part is written: mark the checkpoint complete and make it visible."""
    layout = {
        "world_size": dist.world_size(),
        "zero_stage": zero_stage(engine),
        "global_batch_size": engine.train_batch_size(),
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
    previous = latest_checkpoint(root)
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


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(CHECKPOINT_PREFIX + "*") if (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def checkpoint_info(path: Path) -> dict:
    """What complete.json records: the loop state, and the world size, ZeRO stage and global batch that wrote it."""
    return json.loads((path / COMPLETE_MARKER).read_text())


def load_checkpoint(engine, path: Path, load_optimizer: bool = True) -> tuple[dict, dict | None]:
    """Restore model, optimiser, schedule (and ZeRO shards) from a checkpoint; returns (loop state, this rank's state).

    ZeRO partitions the optimiser state by world size, so another world size loads the checkpoint's universal
    form (made here once). The rank state is None then: one rank's RNG streams do not map onto another's.
    """
    state = checkpoint_info(path)
    same_world = state.get("world_size") == dist.world_size()
    kwargs = dict(load_optimizer_states=load_optimizer, load_lr_scheduler_states=load_optimizer)
    if same_world or not load_optimizer or zero_stage(engine) == 0:
        # stage 0 keeps whole optimiser state in mp_rank_00_model_states.pt, readable by any world size
        engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=True, **kwargs)
    else:
        universal = universal_checkpoint(path)
        groups = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in engine.optimizer.param_groups]
        # DeepSpeed reads load_universal from its config at load time only: switched on for this one load, as
        # the same engine later loads native checkpoints (ft's best weights)
        engine._config.load_universal_checkpoint = True
        try:
            engine.load_checkpoint(str(path), tag=universal.name, load_module_strict=True, **kwargs)
        finally:
            engine._config.load_universal_checkpoint = False
        _repair_zero3_universal_load(engine, groups)
    rank_file = path / f"rank{dist.rank()}.pt"
    rank_state = torch.load(rank_file, weights_only=False) if same_world and rank_file.is_file() else None
    return state, rank_state


def _repair_zero3_universal_load(engine, groups: list[dict]) -> None:
    """Undo two slips of DeepSpeed 0.19.8's ZeRO-3 universal load; stages 1 and 2 load right.

    It hands one `step` tensor to every group's Adam state, which torch's AdamW then advances once per group and
    step: the no-decay group's bias correction ran a step ahead (measured: the loss drifted by 1e-4 within 3
    steps). And it gives every group the first group's hyperparameters: biases and norms got weight decay (2e-7
    within 3 steps, growing). `groups` holds each group's own values from before the load (our config, which a
    resumed phase shares); the learning rate comes from the restored schedule.
    """
    for group, own in zip(engine.optimizer.param_groups, groups):
        group.update(own)
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in base.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def universal_checkpoint(path: Path) -> Path:
    """<path>/universal: DeepSpeed's world-size-independent form of a ZeRO checkpoint, converted once by rank 0.

    The conversion (deepspeed.checkpoint.ds_to_universal) writes a partial folder that is renamed when complete,
    so an interrupted conversion is redone, never half-read. Every rank calls it and gets the path or the error.
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
            error = f"converting {path} for another world size failed ({' '.join(command)}):\n{proc.stderr[-4000:]}"
    error = dist.broadcast_object(error)
    if error is not None:
        raise RuntimeError(error)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Whole parameters for export


@contextlib.contextmanager
def full_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Inside this block every parameter of `module` holds its whole value on every rank (ZeRO-3 gathers them).

    Read-only: changes made inside are not written back. Every rank must enter it.
    """
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield
