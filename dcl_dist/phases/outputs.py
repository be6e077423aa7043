"""The end of every phase: the truncation note, the embedding report, and the artifact with its lineage, its data
and its settings (what its model card says); and, at the start of a variant's first phase, the base encoder's
embedding report, so that the run report shows where the clusters start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dcl_dist import dist, engine
from dcl_dist.config import to_dict
from dcl_dist.data.batching import Tokenize
from dcl_dist.data.splits import class_counts
from dcl_dist.errors import TrainingError
from dcl_dist.evaluation import encoder_diagnostics
from dcl_dist.loop import LoopState
from dcl_dist.models import lora
from dcl_dist.models.artifact import read_meta, write_artifact
from dcl_dist.models.encoder import SentenceEncoder
from dcl_dist.monitor import log_embeddings
from dcl_dist.phases.context import PhaseContext
from dcl_dist.phases.start import adapter_chain, phase_adapter, uses_lora
from dcl_dist.rundir import BASE

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
    embedding = embedding_report(ctx, phase, encoder, tokenize, state.step)
    metrics = {**metrics, "embedding": embedding, "training": {"seconds": state.seconds, "samples": state.samples}}
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


def embedding_report(
    ctx: PhaseContext, phase: str, encoder: SentenceEncoder, tokenize: Tokenize, step: int, base: bool = False
) -> dict:
    """What the phase did to the representation: silhouette by class and kNN accuracy of the encoder output on
    validation, logged to TensorBoard with the embeddings themselves (projector); every rank calls it.

    base: the base encoder instead (the pooled backbone, before any Dense layer the phase added), recorded as BASE.
    """
    validation = ctx.splits.validation
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        diagnostics, vectors = encoder_diagnostics(
            (lambda ids, mask: encoder(ids, mask, depth=0)) if base else encoder,
            tokenize,
            validation.texts,
            validation.labels,
            ctx.eval_batch_size(phase),
        )
    encoder.train(was_training)
    point_class_names = [ctx.splits.class_names[i] for i in validation.labels]
    name, tensorboard = (BASE, ctx.run_dir.base_tensorboard) if base else (phase, ctx.phase_dir(phase).tensorboard)
    log_embeddings(tensorboard, name, ctx.cfg, step, vectors, point_class_names, diagnostics)
    if dist.is_main():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in diagnostics.items())
        log.info("%s: validation embeddings by class: %s", "base encoder" if base else phase, shown)
    return diagnostics


def record_base(ctx: PhaseContext, phase: str, encoder: SentenceEncoder, tokenize: Tokenize) -> None:
    """At the start of the variant's first phase, before it trains: the base encoder's embedding report (once per
    run directory; a resumed phase finds it recorded). Every rank calls it, with the engine's encoder."""
    if ctx.lineage:
        return
    recorded = dist.broadcast_object(ctx.run_dir.base_tensorboard.is_dir() if dist.is_main() else None)
    if not recorded:
        embedding_report(ctx, phase, encoder, tokenize, 0, base=True)


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
        "data": data_record(ctx, meta.get("metrics", {})),
        "config": to_dict(ctx.cfg),
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


def data_record(ctx: PhaseContext, metrics: dict) -> dict:
    """What an artifact was trained on: the splits' sources and sizes, train's class counts, and the imbalance
    correction (this phase's, or the one an earlier phase of its lineage applied)."""
    cfg, splits = ctx.cfg, ctx.splits
    if splits.stream is not None:
        counts = splits.stream.class_counts
    else:
        counts = class_counts(splits.train.levels, len(splits.class_names))
    record = {
        "train": cfg.data.train,
        "validation": cfg.data.validation,
        "validation_from_train": splits.validation_from_train,
        "test": cfg.data.test,
        "sizes": {
            "train": sum(counts),
            "validation": len(splits.validation),
            "test": len(splits.test) if splits.test is not None else 0,
        },
        "class_counts": dict(zip(splits.class_names, counts)),
    }
    correction = metrics.get("imbalance_correction")
    if correction is None and ctx.lineage:
        correction = read_meta(Path(ctx.source)).get("data", {}).get("imbalance_correction")
    if correction is not None:
        record["imbalance_correction"] = correction
    return record
