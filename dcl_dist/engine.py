"""DeepSpeed: the only module that imports deepspeed.

Builds the DeepSpeed config from a shipped template (configs/deepspeed/zero<stage>.json) with its "auto"
values filled from our config, wraps a model in an engine (`model_engine` wherever one is held: DeepSpeed's own
name) and gathers ZeRO-3-partitioned parameters for export. Checkpoints are checkpoints.py's; which one a
phase resumes, and so its ZeRO stage, is resume.py's decision, handed in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deepspeed
import torch

from dcl_dist import dist
from dcl_dist.config import Config, PhaseConfig
from dcl_dist.data.batch_plan import accumulation_steps
from dcl_dist.errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent / "deepspeed_templates"
"""configs/deepspeed, linked into the package so that an installed package finds it too."""

logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
log = logging.getLogger(__name__)


def resolve_precision(choice: str) -> str:
    """fp32, bf16 or fp16 for this machine: auto is bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU."""
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def uses_autocast(cfg: Config) -> bool:
    """Whether 16-bit training runs as torch.autocast over fp32 weights (deepspeed.mixed_precision: autocast)."""
    return resolve_precision(cfg.deepspeed.precision) != "fp32" and cfg.deepspeed.mixed_precision == "autocast"


def _template(cfg: Config) -> dict:
    settings = cfg.deepspeed
    if settings.config_file is not None:
        path = Path(settings.config_file)
    else:
        suffix = "_offload" if settings.offload != "none" else ""
        path = TEMPLATES / f"zero{settings.zero_stage}{suffix}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _fill(node: Any, values: dict[str, Any], path: str = "") -> Any:
    """Replace every "auto" leaf by values[its dotted path]."""
    if isinstance(node, dict):
        return {k: _fill(v, values, f"{path}.{k}" if path else k) for k, v in node.items()}
    if node == "auto":
        if path not in values:
            raise ConfigError(
                [f"'deepspeed.config_file': no value is known for its 'auto' at {path}: give a number in the JSON"]
            )
        return values[path]
    return node


def deepspeed_config(cfg: Config, phase: str, world_size: int, total_steps: int, hidden_size: int) -> dict:
    """The DeepSpeed config of one phase: template + batch sizes, optimiser, schedule, precision, ZeRO stage."""
    p: PhaseConfig = getattr(cfg, phase)
    accumulation = accumulation_steps(cfg, phase, world_size)
    precision = resolve_precision(cfg.deepspeed.precision)
    autocast = uses_autocast(cfg)
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
        # autocast: DeepSpeed's own 16-bit optimiser is off, the weights stay fp32 (see _autocast_section)
        "bf16.enabled": precision == "bf16" and not autocast,
        "fp16.enabled": precision == "fp16" and not autocast,
        # HF Trainer's ZeRO-3 rules of thumb, in the model's hidden size
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    out = _fill(_template(cfg), values)
    if cfg.deepspeed.config_file is None:
        out.setdefault("zero_optimization", {})["stage"] = cfg.deepspeed.zero_stage
    if autocast:
        out["torch_autocast"] = _autocast_section(precision)
    if not torch.cuda.is_available():
        out["zero_force_ds_cpu_optimizer"] = False  # torch's AdamW is the CPU optimiser here
    return out


def check_config_file(cfg: Config, phases: tuple[str, ...]) -> None:
    """deepspeed.config_file as DeepSpeed itself reads it, for each phase, before any data or model loads: its
    refusals (pydantic's, or a bare assert or TypeError from deep inside) become one ConfigError naming the file."""
    if cfg.deepspeed.config_file is None:
        return
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    for phase in phases:
        p = getattr(cfg, phase)
        if p.micro_batch_size_per_rank == "auto":  # chosen when the phase starts: any size checks the file
            cfg = dataclasses.replace(cfg, **{phase: dataclasses.replace(p, micro_batch_size_per_rank=1)})
        config = deepspeed_config(cfg, phase, dist.world_size(), total_steps=100, hidden_size=768)
        try:
            DeepSpeedConfig(config)
        except (ValidationError, AssertionError, TypeError, ValueError, AttributeError, KeyError) as e:
            why = " ".join(str(e).split())[:400] or type(e).__name__
            raise ConfigError(
                [
                    f"'deepspeed.config_file' {cfg.deepspeed.config_file}: DeepSpeed refuses it for phase {phase}"
                    f' ({type(e).__name__}: {why}): fix the file (configs/deepspeed/ holds working examples; "auto"'
                    " takes the value from the dcl_dist config)"
                ]
            ) from None


def _autocast_section(precision: str) -> dict:
    """DeepSpeed's torch_autocast: fp32 weights, the forward under torch.autocast, torch's fused AdamW.

    DeepSpeed's bf16 optimiser at stage 0 keeps 16-bit weights and fp32 master copies and copies gradients and
    weights between them parameter by parameter: on an H100 a third of a RoBERTa-base step went to those launches
    (docs/RESULTS.md). Here the optimiser is one multi-tensor kernel over the fp32 weights at stage 0, and one
    kernel over the flat fp32 partition at stages 1-3. Linear layers' gradients are reduced in 16 bits, as
    DeepSpeed's bf16 path reduces every gradient.
    """
    return {"enabled": True, "dtype": "bfloat16" if precision == "bf16" else "float16"}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: with weight decay, and without (biases, norms)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def initialize(
    model: torch.nn.Module, cfg: Config, phase: str, total_steps: int, hidden_size: int, stage: int | None = None
):
    """Wrap `model` in a DeepSpeed engine (optimiser and schedule from the config); every rank calls it.

    stage: the ZeRO stage to run, where a resumed checkpoint fixes it (resume.py): the optimiser state is laid
    out by stage, and DeepSpeed converts it between world sizes, not between stages. None: the configured stage.
    """
    dist.init()
    if not torch.cuda.is_available():
        # DeepSpeed would compile a shared-memory all-reduce for CPU ranks (a minute, once per machine); gloo's
        # own collectives are what the CPU runs (tests, quickstart) need.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    config = deepspeed_config(cfg, phase, dist.world_size(), total_steps, hidden_size)
    configured = config.get("zero_optimization", {}).get("stage", 0)
    running = _stage_to_run(cfg, phase, configured, stage)
    if running != configured:
        config["zero_optimization"] = (
            {**config.get("zero_optimization", {}), "stage": running} if running else {"stage": 0}
        )
    groups = [g for g in _param_groups(model, getattr(cfg, phase).weight_decay) if g["params"]]
    model_engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=config)
    if zero_stage(model_engine) == 0 and not (model_engine.bfloat16_enabled() or model_engine.fp16_enabled()):
        model_engine.clip_fp32_gradients = lambda: _clip_fp32_gradients(model_engine)
    if cfg.model.compile:
        compile_bodies(model_engine.module, zero_stage(model_engine))
    if dist.world_size() == 1 and zero_stage(model_engine) == 0:
        # one rank has nothing to reduce, but DeepSpeed's backward still flattens, "all-reduces" and copies back
        # every gradient: 20% of an ft step of MiniLM on the CPU (measured: backward 127 -> 81 ms)
        model_engine.enable_backward_allreduce = False
    return model_engine


def compile_bodies(model: torch.nn.Module, stage: int) -> int:
    """torch.compile (in place: parameter names unchanged) every transformer body in `model`; returns how many.

    The bodies only: packing plans on the host and the losses stay eager. Shapes change from batch to batch
    (length, packed rows), hence dynamic shapes. ZeRO-3's parameter hooks and compiled graphs do not mix here.
    """
    from transformers import PreTrainedModel

    if stage == 3:
        if dist.is_main():
            log.info("model.compile: not with ZeRO stage 3 (its parameter hooks): running eagerly")
        return 0
    bodies = [m for m in model.modules() if isinstance(m, PreTrainedModel) and m.base_model is m]
    for body in bodies:
        body.compile(dynamic=True)
    return len(bodies)


def _stage_to_run(cfg: Config, phase: str, configured: int, asked: int | None) -> int:
    """The asked stage, else the configured one; on one rank without offload, stage 0."""
    stage = configured
    if dist.world_size() == 1 and stage > 0 and cfg.deepspeed.offload == "none" and cfg.deepspeed.config_file is None:
        # one rank has nothing to partition: ZeRO would only add bucket copies (40% of a CPU step, measured)
        stage = 0
        if dist.is_main():
            log.info("%s: one rank, so ZeRO stage %d partitions nothing: running stage 0", phase, configured)
    if asked is not None and asked != stage:
        stage = asked
        if dist.is_main():
            log.info("%s: its checkpoint was written with ZeRO stage %d: the phase keeps that stage", phase, stage)
    return stage


def learning_rate(model_engine) -> float:
    return float(model_engine.get_lr()[0])


def _clip_fp32_gradients(model_engine) -> None:
    """Stage 0 with fp32 weights: clip with PyTorch's multi-tensor kernels and keep the norm for the logs.
    DeepSpeed's own clip here loops over the parameters in Python (25 ms of a 475 ms MiniLM dae step on the CPU)
    and drops the norm it computed."""
    params = [p for p in model_engine.module.parameters() if p.grad is not None]
    max_norm = model_engine.gradient_clipping()
    if not params or params[0].device.type != "cpu":
        model_engine._global_grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    # PyTorch scales by min(1, max_norm / (norm + 1e-6)) even when that is 1, so as not to wait for the norm on a
    # GPU; on the CPU the norm is at hand, and a scaling by exactly 1 changes no bit: skipped, it saves a read and a
    # write of every gradient
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    model_engine._global_grad_norm = norm
    if (max_norm / (norm + 1e-6)).item() < 1.0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)


@contextlib.contextmanager
def autocast(model_engine) -> Iterator[None]:
    """The engine's forward precision outside its forward (validation calls the module itself)."""
    if not model_engine.torch_autocast_enabled():
        yield
        return
    with torch.autocast(dist.device().type, dtype=model_engine.torch_autocast_dtype()):
        yield


def grad_norm(model_engine) -> float | None:
    """The global gradient norm of the last optimiser step, before clipping (None where DeepSpeed keeps none)."""
    norm = model_engine.get_global_grad_norm()
    if norm is None:
        return None
    return float(norm.item() if torch.is_tensor(norm) else norm)


def zero_stage(model_engine) -> int:
    return int(model_engine.zero_optimization_stage())


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
