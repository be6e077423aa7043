"""Building blocks every phase uses: its context, the starting encoder, batch plan, loaders and the artifact."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcl_dist import dist
from dcl_dist import engine as ds
from dcl_dist.config import Config
from dcl_dist.data.batch_plan import BatchPlan, accumulation_steps
from dcl_dist.data.batching import Tokenize, epoch_order, length_grouped, make_loader
from dcl_dist.data.contrastive import ContrastiveBatches, correction, correction_ratios
from dcl_dist.data.splits import Splits, TextSet
from dcl_dist.data.streaming import StreamFeed
from dcl_dist.errors import TrainingError
from dcl_dist.evaluation import encoder_diagnostics
from dcl_dist.losses.pair_cosine import InBatchCosineLoss, PairCosineLoss, all_pairs_cosine_mse, level_weights
from dcl_dist.losses.supcon import SupConLoss
from dcl_dist.models import lora
from dcl_dist.models.artifact import ADAPTER_DIR, is_complete, load_artifact, read_meta, write_artifact
from dcl_dist.models.encoder import SentenceEncoder, load_backbone

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE_FACTOR = 2
"""Evaluation batches are this many times the training micro-batch (no activations kept for backward)."""

EVAL_LOSS_MAX_EXAMPLES = 2000
"""The contrastive validation loss takes every pair of at most this many validation examples (a fixed subset)."""


@dataclass
class PhaseContext:
    """What the pipeline hands a phase: config, run directory, data and the artifact it starts from."""

    cfg: Config
    run_dir: Path
    splits: Splits
    source: str
    """The base model (hub name or folder) or the previous phase's artifact folder."""
    lineage: list[dict] = field(default_factory=list)
    """The phases that made `source`, oldest first (each: phase, artifact, its adapter or None)."""

    def phase_dir(self, phase: str) -> Path:
        return self.run_dir / phase


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

        encoder = SentenceEncoder(load_backbone(ctx.source, attn), cfg.model.pooling)
        tokenizer = AutoTokenizer.from_pretrained(ctx.source)
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
    """model.max_length, or for auto the model's limit capped at 512."""
    if isinstance(cfg.model.max_length, int):
        return cfg.model.max_length
    limits = [512]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    positions = getattr(backbone.config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style models reserve the first positions (padding_idx + 1)
        limits.append(
            positions - (getattr(backbone.config, "pad_token_id", 0) or 0) - 1
            if backbone.config.model_type in ("roberta", "xlm-roberta", "camembert")
            else positions
        )
    return min(limits)


def batch_plan(cfg: Config, phase: str) -> BatchPlan:
    p = getattr(cfg, phase)
    world = dist.world_size()
    return BatchPlan(p.micro_batch_size_per_rank, world, accumulation_steps(cfg, phase, world))


def num_workers(cfg: Config) -> int:
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    return min(2, os.cpu_count() or 1) if torch.cuda.is_available() else 0


def epoch_loader(
    cfg: Config, plan: BatchPlan, order: list[int], start_step: int, steps: int, collate: Callable
) -> torch.utils.data.DataLoader:
    """This rank's micro-batches of one epoch, from start_step, collated (in worker processes on a GPU host)."""
    return make_loader(plan.micro_batches(order, dist.rank(), start_step, steps), collate, num_workers(cfg))


def shuffled_order(cfg: Config, plan: BatchPlan, n: int, lengths: list[int], epoch: int) -> list[int]:
    """An epoch's order of n items: a (seed, epoch) permutation, grouped by length (tokens per item) if asked."""
    order = epoch_order(n, cfg.run.seed, epoch)
    if cfg.data.group_by_length:
        order = length_grouped(order, lengths, plan.global_batch, cfg.run.seed, epoch)
    return order


def stream_feed(ctx: PhaseContext, phase: str, tokenize: Tokenize, ratios: list[float] | None = None) -> StreamFeed:
    """The phase's training batches read from the stream (data.streaming); ratios: the imbalance correction's."""
    return StreamFeed(
        ctx.cfg, phase, ctx.splits.stream, tokenize, batch_plan(ctx.cfg, phase), num_workers(ctx.cfg), ratios
    )


def contrastive_batches(
    ctx: PhaseContext, phase: str, tokenize: Tokenize, with_dae: bool = False
) -> tuple[int, Callable, dict]:
    """(steps per epoch, batches, correction record) of phase cl or joint: the corrected
    set in memory, or the stream corrected one example at a time; with_dae adds the denoising inputs (joint)."""
    cfg = ctx.cfg
    if ctx.splits.stream is not None:
        ratios, record = correction_ratios(cfg, ctx.splits.stream.class_counts)
        feed = stream_feed(ctx, phase, tokenize, ratios)
        return feed.steps_per_epoch, feed.batches, record
    entries, record = correction(cfg, ctx.splits.train, len(ctx.splits.classes))
    plan = batch_plan(cfg, phase)
    contrast = ContrastiveBatches(cfg, ctx.splits.train, entries, tokenize, plan.global_batch, with_dae)
    steps_per_epoch = plan.steps(contrast.n_items)

    def batches(epoch: int, start: int, data_state=None):
        collate, order = contrast.collate_and_order(epoch)
        return epoch_loader(cfg, plan, order, start, steps_per_epoch, collate)

    return steps_per_epoch, batches, record


def eval_batch_size(cfg: Config, phase: str) -> int:
    return getattr(cfg, phase).micro_batch_size_per_rank * EVAL_BATCH_SIZE_FACTOR


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


def save_artifact(
    ctx: PhaseContext,
    phase: str,
    engine: Any,
    encoder: SentenceEncoder,
    tokenizer: Any,
    max_length: int,
    meta: dict,
    head: torch.nn.Module | None = None,
) -> Path:
    """Write <run>/<phase>/artifact from the engine's weights (gathered first under ZeRO-3); every rank calls it."""
    path = ctx.phase_dir(phase) / "artifact"
    record = {
        "phase": phase,
        "variant": ctx.cfg.run.variant,
        "base_model": ctx.cfg.model.name_or_path,
        "started_from": ctx.source,
        "labels": ctx.splits.classes,
    }
    failure: OSError | None = None
    with ds.full_parameters(engine.module):
        if dist.is_main():
            adapter = phase_adapter(ctx, phase, encoder.backbone) if uses_lora(ctx.cfg, phase) else None
            lineage = {"phase": phase, "adapter": _adapter_record(ctx.cfg, encoder.backbone) if adapter else None}
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


def _adapter_record(cfg: Config, backbone: torch.nn.Module) -> dict:
    """What the lineage says of a phase's own adapter."""
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
    from dcl_dist.loop import log_embeddings

    validation = ctx.splits.validation
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        diagnostics, vectors = encoder_diagnostics(
            encoder, tokenize, validation.texts, validation.labels, eval_batch_size(ctx.cfg, phase)
        )
    encoder.train(was_training)
    names = [ctx.splits.classes[i] for i in validation.labels]
    log_embeddings(ctx.run_dir, phase, ctx.cfg, step, vectors, names, diagnostics)
    if dist.is_main():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in diagnostics.items())
        log.info("%s: validation embeddings by class: %s", phase, shown)
    return diagnostics


def contrastive_loss(cfg: Config, n_levels: int) -> torch.nn.Module:
    """The loss phase cl (and the joint phase) minimises, from cl.mode and cl.loss."""
    weights = level_weights(n_levels, cfg.cl.level_weights)
    if cfg.cl.mode == "pair":
        return PairCosineLoss(weights)
    if cfg.cl.loss == "supcon":
        return SupConLoss(cfg.cl.temperature)
    return InBatchCosineLoss(weights)


def contrastive_evaluator(
    cfg: Config,
    phase: str,
    encoder: Callable[[], torch.nn.Module],
    tokenize: Tokenize,
    validation: TextSet,
    n_levels: int,
) -> Callable[[], dict[str, float]]:
    """Validation of an encoder trained to cluster by class: the paper's loss over all pairs, silhouette, kNN."""
    subset = np.sort(np.random.default_rng(cfg.run.seed).permutation(len(validation))[:EVAL_LOSS_MAX_EXAMPLES])
    levels = torch.tensor([validation.levels[i] for i in subset.tolist()])
    weights = level_weights(n_levels, cfg.cl.level_weights)

    def evaluate() -> dict[str, float]:
        diagnostics, vectors = encoder_diagnostics(
            encoder(), tokenize, validation.texts, validation.labels, eval_batch_size(cfg, phase)
        )
        return {"cosine_mse": float(all_pairs_cosine_mse(vectors[subset.tolist()], levels, weights)), **diagnostics}

    return evaluate
