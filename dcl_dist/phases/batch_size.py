"""micro_batch_size_per_rank: auto: the largest micro-batch that fits on this GPU, found before a phase starts;
the global batch (the phase's, or its checkpoint's) is kept by gradient accumulation.

On a GPU the phase's encoder (and TSDAE decoder) is built once more and trained on the longest batch there can
be, every text model.max_length tokens long, twice as many texts each time until one runs out of memory, with
the optimiser's state held aside in memory. On a CPU, auto is CPU_MICRO_BATCH: memory is rarely what limits a
CPU, and no probe is run.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch

from dcl_dist import dist, engine
from dcl_dist.config import Config
from dcl_dist.errors import ConfigError
from dcl_dist.loop import is_out_of_memory
from dcl_dist.models.decoder import build_tsdae_decoder
from dcl_dist.phases.context import PhaseContext
from dcl_dist.phases.start import load_start, resolve_max_length, uses_lora

log = logging.getLogger(__name__)

CPU_MICRO_BATCH = 16
"""What micro_batch_size_per_rank: auto is on a CPU (the key's default)."""
FIRST_TRY, MOST = 8, 4096
"""The probe tries FIRST_TRY, 2 x FIRST_TRY, ... up to MOST texts (pairs) per micro-batch."""


def fit_micro_batch(ctx: PhaseContext, phase: str) -> Config:
    """The config the phase runs with: its auto micro-batch resolved (the same on every rank), or ctx.cfg as it is."""
    p = getattr(ctx.cfg, phase)
    if p.micro_batch_size_per_rank != "auto":
        return ctx.cfg
    fits = CPU_MICRO_BATCH
    if torch.cuda.is_available():
        fits = _largest_that_fits(ctx, phase)
        torch.cuda.empty_cache()
    fits = min(dist.all_gather_ints(fits))
    cfg = copy.deepcopy(ctx.cfg)
    chosen = getattr(cfg, phase)
    world = dist.world_size()
    if chosen.global_batch_size is None:
        chosen.micro_batch_size_per_rank = fits
    else:
        chosen.micro_batch_size_per_rank = largest_divisor(chosen.global_batch_size // world, fits)
    if dist.is_main():
        log.info(
            "%s: micro_batch_size_per_rank auto: %d fits, %d used (global batch %s on %d ranks)",
            phase,
            fits,
            chosen.micro_batch_size_per_rank,
            chosen.global_batch_size or chosen.micro_batch_size_per_rank * world,
            world,
        )
    return cfg


def largest_divisor(per_rank: int, at_most: int) -> int:
    """The largest micro-batch <= at_most that divides a rank's share of the global batch (accumulation makes up
    the rest)."""
    if per_rank < 1:
        raise ConfigError(["a phase's global_batch_size must be at least the world size with micro_batch_size: auto"])
    return max(d for d in range(1, min(per_rank, at_most) + 1) if per_rank % d == 0)


def search(fits: Callable[[int], bool], first: int = FIRST_TRY, most: int = MOST) -> int:
    """The largest of first, 2 x first, ... (up to most) for which fits() holds, stopping at the first that fails;
    below `first`, halving down to 1. 1 when nothing fits (the step will then say it ran out of memory)."""
    size = first
    if not fits(size):
        while size > 1:
            size //= 2
            if fits(size):
                return size
        return 1
    while size * 2 <= most and fits(size * 2):
        size *= 2
    return size


def _largest_that_fits(ctx: PhaseContext, phase: str) -> int:
    """Probe this GPU with the phase's models (see the module doc)."""
    cfg = ctx.cfg
    encoder, tokenizer = load_start(ctx, phase)
    length = resolve_max_length(cfg, tokenizer, encoder.backbone)
    decoder = None
    if phase in ("dae", "joint"):
        decoder = build_tsdae_decoder(
            cfg.model.name_or_path, cfg.model.attn_implementation, encoder.backbone, True, uses_lora(cfg, phase)
        )
    modules = torch.nn.ModuleList([encoder] if decoder is None else [encoder, decoder])
    autocast = engine.uses_autocast(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(engine.resolve_precision(cfg.deepspeed.precision))
    device = dist.device()
    modules.to(device=device, dtype=None if autocast or dtype is None else dtype)
    texts_per_item = 2 if phase in ("cl", "joint") and cfg.cl.mode == "pair" else 1
    held_aside = _optimiser_bytes(modules, cfg)

    def fits(micro: int) -> bool:
        ids = torch.randint(1000, 2000, (micro * texts_per_item, length), device=device)
        mask = torch.ones_like(ids)
        try:
            state = torch.empty(held_aside, dtype=torch.uint8, device=device)
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                vectors = encoder(ids, mask)
                loss = vectors.float().square().mean()
                if decoder is not None:
                    loss = loss + decoder(vectors[:micro], ids[:micro, :-1], mask[:micro, :-1], ids[:micro, 1:]).mean()
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            del state
            return True
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
            if not is_out_of_memory(e):
                raise
            return False
        finally:
            modules.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    return search(fits)  # the probe's models are freed on return; fit_micro_batch empties the cache


def _optimiser_bytes(modules: torch.nn.Module, cfg: Config) -> int:
    """Memory the engine will add to what a forward and backward hold: AdamW's two fp32 moments per trainable
    parameter (and DeepSpeed's fp32 master weights and gradients in its 16-bit mode), partitioned over the ranks
    from ZeRO stage 1 on."""
    trainable = sum(p.numel() for p in {id(p): p for p in modules.parameters() if p.requires_grad}.values())
    fp32_weights = engine.uses_autocast(cfg) or engine.resolve_precision(cfg.deepspeed.precision) == "fp32"
    per_parameter = 8 if fp32_weights else 16
    shards = dist.world_size() if cfg.deepspeed.zero_stage >= 1 else 1
    return trainable * per_parameter // shards
