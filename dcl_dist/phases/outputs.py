"""The end of every phase: the truncation note, the embedding report, and the artifact with its lineage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dcl_dist import dist, engine
from dcl_dist.data.batching import Tokenize
from dcl_dist.errors import TrainingError
from dcl_dist.evaluation import encoder_diagnostics
from dcl_dist.loop import LoopState
from dcl_dist.models import lora
from dcl_dist.models.artifact import read_meta, write_artifact
from dcl_dist.models.encoder import SentenceEncoder
from dcl_dist.monitor import log_embeddings
from dcl_dist.phases.context import PhaseContext
from dcl_dist.phases.start import adapter_chain, phase_adapter, uses_lora

log = logging.getLogger(__name__)


def finish(
    ctx: PhaseContext,
    phase: str,
    model_engine: Any,
    encoder: SentenceEncoder,
    tokenizer: Any,
    tokenize: Tokenize,
    state: LoopState,
    metrics: dict,
    head: torch.nn.Module | None = None,
) -> dict:
    """Report what the phase did and write its artifact; returns its metrics with the embedding report added.

    `encoder` and `head` are the engine's own modules (model_engine.module or parts of it); every rank calls it.
    """
    truncation_note(tokenize, phase)
    metrics = {**metrics, "embedding": embedding_report(ctx, phase, encoder, tokenize, state.step)}
    save_artifact(ctx, phase, model_engine, encoder, tokenizer, tokenize.max_length, {"metrics": metrics}, head)
    return metrics


def truncation_note(tokenize: Tokenize, phase: str) -> None:
    """Log how many texts were cut to max_length on this phase (summed over ranks)."""
    (count,) = dist.sum_floats(tokenize.truncated)
    if count and dist.is_main():
        log.warning(
            "%s: %d texts were longer than max_length %d tokens and were truncated",
            phase,
            int(count),
            tokenize.max_length,
        )


def embedding_report(ctx: PhaseContext, phase: str, encoder: torch.nn.Module, tokenize: Tokenize, step: int) -> dict:
    """What the phase did to the representation: silhouette by class and kNN accuracy of the encoder output on
    validation, logged to TensorBoard with the embeddings themselves (projector); every rank calls it."""
    validation = ctx.splits.validation
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        diagnostics, vectors = encoder_diagnostics(
            encoder, tokenize, validation.texts, validation.labels, ctx.eval_batch_size(phase)
        )
    encoder.train(was_training)
    point_class_names = [ctx.splits.class_names[i] for i in validation.labels]
    log_embeddings(ctx.phase_dir(phase), ctx.cfg, step, vectors, point_class_names, diagnostics)
    if dist.is_main():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in diagnostics.items())
        log.info("%s: validation embeddings by class: %s", phase, shown)
    return diagnostics


def save_artifact(
    ctx: PhaseContext,
    phase: str,
    model_engine: Any,
    encoder: SentenceEncoder,
    tokenizer: Any,
    max_length: int,
    meta: dict,
    head: torch.nn.Module | None = None,
) -> Path:
    """Write <run>/<phase>/artifact from the engine's weights (gathered first under ZeRO-3); every rank calls it."""
    path = ctx.phase_dir(phase).artifact
    record = {
        "phase": phase,
        "variant": ctx.cfg.run.variant,
        "base_model": ctx.cfg.model.name_or_path,
        "started_from": ctx.source,
        "class_names": ctx.splits.class_names,
    }
    failure: OSError | None = None
    with engine.full_parameters(model_engine.module):
        if dist.is_main():
            adapter = phase_adapter(ctx, phase, encoder.backbone) if uses_lora(ctx.cfg, phase) else None
            lineage = {"phase": phase, "adapter": _adapter_record(ctx, encoder.backbone) if adapter else None}
            record["lineage"] = [*ctx.lineage, lineage]
            record["lora"] = _chain_record(ctx, phase, adapter) if adapter else None
            try:
                write_artifact(path, encoder, tokenizer, {**record, **meta}, max_length, head, adapter)
            except OSError as e:  # a full disk: the folder is written atomically, nothing partial stays
                failure = e
    if dist.any_true(failure is not None):
        why = f"{failure.strerror} ({failure.filename})" if failure is not None and failure.strerror else failure
        raise TrainingError(
            f"{path} could not be written: {why or 'rank 0 could not write it'}. The phase's last checkpoint is kept:"
            " free space (or fix the folder's permissions) and run the same command again to write it"
        )
    return path


def _adapter_record(ctx: PhaseContext, backbone: torch.nn.Module) -> dict:
    """What the lineage says of a phase's own adapter."""
    cfg = ctx.cfg
    return {
        "r": cfg.lora.r,
        "alpha": cfg.lora.alpha,
        "target_modules": sorted(backbone.peft_config[lora.ADAPTER_NAME].target_modules),
        "then": "merged" if cfg.lora.merge_between_phases else "carried on",
    }


def _chain_record(ctx: PhaseContext, phase: str, adapter: lora.Adapter) -> dict:
    """meta["lora"]: the base that adapter/ applies to, its rank and the phases whose adapters it holds."""
    _, previous = adapter_chain(ctx)
    earlier = read_meta(Path(ctx.source))["lora"]["phases"] if previous is not None else []
    return {
        "base": adapter.base,
        "rank": adapter.config.r,
        "phases": [*earlier, phase],
        "merge_between_phases": ctx.cfg.lora.merge_between_phases,
    }
