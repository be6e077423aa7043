"""Where a phase starts: the same seed on every rank, the encoder it starts from (with its place in a chain of
LoRA adapters), the tokens it may read, and the DeepSpeed engine around the model it builds."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcl_dist import dist, engine, loop
from dcl_dist.config import Config
from dcl_dist.errors import ConfigError, ModelError
from dcl_dist.models import lora
from dcl_dist.models.artifact import ADAPTER_DIR, is_complete, load_artifact, read_meta
from dcl_dist.models.encoder import SentenceEncoder, load_backbone
from dcl_dist.phases.context import PhaseContext

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Same seed on every rank: new layers (dense, head, cross-attention) start identical everywhere."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_start(ctx: PhaseContext, phase: str) -> tuple[SentenceEncoder, Any]:
    """The encoder (with its dense layers) and tokenizer this phase starts from; in a LoRA phase, with its adapter."""
    cfg = ctx.cfg
    attn = cfg.model.attn_implementation
    base, previous = adapter_chain(ctx)
    carry = uses_lora(cfg, phase) and previous is not None and not cfg.lora.merge_between_phases
    if is_complete(Path(ctx.source)):
        # carrying an adapter on: it goes back onto the backbone it was trained on, not onto the merged weights
        art = load_artifact(Path(ctx.source), attn, load_backbone(base, attn) if carry else None)
        encoder, tokenizer = art.encoder, art.tokenizer
    else:
        from transformers import AutoTokenizer

        try:
            encoder = SentenceEncoder(load_backbone(ctx.source, attn), cfg.model.pooling)
            tokenizer = AutoTokenizer.from_pretrained(ctx.source)
        except (OSError, ValueError) as e:  # what the pre-flight check could not see: a hub name, a file's content
            why = " ".join(str(e).split())[:300]
            raise ModelError(
                f"'model.name_or_path' {ctx.source} cannot be loaded ({type(e).__name__}: {why}): check the name, or"
                " copy the model folder again"
            ) from None
    encoder.packing = cfg.model.packing
    if carry:
        lora.load_adapter(encoder.backbone, lora.read_adapter(previous), trainable=True)
    elif uses_lora(cfg, phase):
        lora.add_adapter(encoder.backbone, cfg.lora)
    return encoder, tokenizer


def uses_lora(cfg: Config, phase: str) -> bool:
    """Whether this phase trains LoRA adapters (else every backbone weight)."""
    return cfg.lora.enabled and phase in cfg.lora.phases


def adapter_chain(ctx: PhaseContext) -> tuple[str, Path | None]:
    """(the backbone an adapter of this phase is expressed on, the adapter folder the previous phase left or None).

    An artifact's adapter/ holds the one adapter that, on its meta["lora"]["base"], gives the artifact's weights;
    a chain of LoRA phases keeps that base, a phase that trained every weight starts a new chain on itself.
    """
    source = Path(ctx.source)
    if is_complete(source):
        record = read_meta(source).get("lora")
        if record:
            return record["base"], source / ADAPTER_DIR
        return str(source.resolve()), None
    return str(source.resolve()) if source.is_dir() else ctx.source, None


def phase_adapter(ctx: PhaseContext, phase: str, backbone: torch.nn.Module) -> lora.Adapter:
    """This phase's adapter on the chain's base: stacked onto the previous phase's when that one was merged.

    Call on rank 0 inside engine.full_parameters (under ZeRO-3 the adapter is partitioned outside it).
    """
    base, previous = adapter_chain(ctx)
    trained = lora.trained_adapter(backbone, base)
    if previous is None or not ctx.cfg.lora.merge_between_phases:
        return trained
    return lora.compose(lora.read_adapter(previous), trained)


def resolve_max_length(cfg: Config, tokenizer: Any, backbone: torch.nn.Module) -> int:
    """model.max_length, or for auto the model's limit capped at 512; a max_length beyond the model's positions is
    a ConfigError (the pre-flight check sees it for a local folder, this for a hub name)."""
    positions = getattr(backbone.config, "max_position_embeddings", None)
    if isinstance(cfg.model.max_length, int):
        limit = _position_limit(backbone.config, positions)
        if limit is not None and cfg.model.max_length > limit:
            raise ConfigError(
                [f"'model.max_length' is {cfg.model.max_length}, but the model reads at most {limit} tokens: use less"]
            )
        return cfg.model.max_length
    limits = [512]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    limit = _position_limit(backbone.config, positions)
    if limit is not None:
        limits.append(limit)
    return min(limits)


def _position_limit(config: Any, positions: int | None) -> int | None:
    if not positions:
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        # RoBERTa-style models reserve the first positions (padding_idx + 1)
        return positions - (getattr(config, "pad_token_id", 0) or 0) - 1
    return positions


def report_trainable(model: torch.nn.Module, phase: str) -> tuple[int, int]:
    """(trainable, total) parameter counts, logged on rank 0 (shared parameters counted once)."""
    params = dict(model.named_parameters())  # each shared parameter once
    total = sum(_numel(p) for p in params.values())
    trainable = sum(_numel(p) for p in params.values() if p.requires_grad)
    adapters = sum(_numel(p) for name, p in params.items() if p.requires_grad and ".lora_" in name)
    if dist.is_main():
        log.info(
            "%s: %s trainable parameters of %s (%.1f%%)%s",
            phase,
            f"{trainable:,}",
            f"{total:,}",
            100.0 * trainable / max(total, 1),
            f", {adapters:,} of them in LoRA adapters" if adapters else "",
        )
    return trainable, total


def _numel(p: torch.nn.Parameter) -> int:
    # ZeRO-3 leaves an empty placeholder in p and records the real size in ds_numel
    return int(getattr(p, "ds_numel", p.numel()))


def start_engine(ctx: PhaseContext, phase: str, model: torch.nn.Module, hidden_size: int, steps_per_epoch: int):
    """The DeepSpeed engine around the phase's model: its schedule spans the phase, and a phase that resumes keeps
    the ZeRO stage of its checkpoint."""
    steps = loop.total_steps(getattr(ctx.cfg, phase), steps_per_epoch)
    stage = ctx.resume.zero_stage if ctx.resume is not None else None
    return engine.initialize(model, ctx.cfg, phase, steps, hidden_size, stage)
