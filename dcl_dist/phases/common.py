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
from dcl_dist.config import Config, accumulation_steps
from dcl_dist.data.batching import BatchPlan, Tokenize, make_loader
from dcl_dist.data.contrastive import ContrastiveBatches, correction, correction_ratios
from dcl_dist.data.splits import Splits, TextSet
from dcl_dist.data.streaming import StreamFeed
from dcl_dist.evaluation import encoder_diagnostics
from dcl_dist.losses.pair_cosine import InBatchCosineLoss, PairCosineLoss, all_pairs_cosine_mse, level_weights
from dcl_dist.losses.supcon import SupConLoss
from dcl_dist.models.artifact import is_complete, load_artifact, write_artifact
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
    """The phases that made `source`, oldest first."""

    def phase_dir(self, phase: str) -> Path:
        return self.run_dir / phase


def seed_everything(seed: int) -> None:
    """Same seed on every rank: new layers (dense, head, cross-attention) start identical everywhere."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_start(ctx: PhaseContext) -> tuple[SentenceEncoder, Any]:
    """The encoder (with its dense layers) and tokenizer this phase starts from."""
    attn = ctx.cfg.model.attn_implementation
    if is_complete(Path(ctx.source)):
        art = load_artifact(Path(ctx.source), attn)
        return art.encoder, art.tokenizer
    from transformers import AutoTokenizer

    backbone = load_backbone(ctx.source, attn)
    return SentenceEncoder(backbone, ctx.cfg.model.pooling), AutoTokenizer.from_pretrained(ctx.source)


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


def stream_feed(ctx: PhaseContext, phase: str, tokenize: Tokenize, ratios: list[float] | None = None) -> StreamFeed:
    """The phase's training batches read from the stream (data.streaming); ratios: the imbalance correction's."""
    return StreamFeed(
        ctx.cfg, phase, ctx.splits.stream, tokenize, batch_plan(ctx.cfg, phase), num_workers(ctx.cfg), ratios
    )


def contrastive_batches(
    ctx: PhaseContext, phase: str, tokenize: Tokenize, with_dae: bool = False
) -> tuple[int, Callable, int, dict]:
    """(steps per epoch, batches, examples per batch row, correction record) of phase cl or joint: the corrected
    set in memory, or the stream corrected one example at a time; with_dae adds the denoising inputs (joint)."""
    cfg = ctx.cfg
    if ctx.splits.stream is not None:
        ratios, record = correction_ratios(cfg, ctx.splits.stream.class_counts)
        feed = stream_feed(ctx, phase, tokenize, ratios)
        return feed.steps_per_epoch, feed.batches, feed.samples_per_item, record
    entries, record = correction(cfg, ctx.splits.train, len(ctx.splits.classes))
    contrast = ContrastiveBatches(cfg, ctx.splits.train, entries, tokenize, with_dae)
    plan = batch_plan(cfg, phase)
    steps_per_epoch = plan.steps(contrast.n_items)

    def batches(epoch: int, start: int, data_state=None):
        collate, order = contrast.collate_and_order(epoch)
        return epoch_loader(cfg, plan, order, start, steps_per_epoch, collate)

    return steps_per_epoch, batches, contrast.samples_per_item, record


def eval_batch_size(cfg: Config, phase: str) -> int:
    return getattr(cfg, phase).micro_batch_size_per_rank * EVAL_BATCH_SIZE_FACTOR


def report_trainable(model: torch.nn.Module, phase: str) -> tuple[int, int]:
    """(trainable, total) parameter counts, logged on rank 0 (shared parameters counted once)."""
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(_numel(p) for p in params)
    trainable = sum(_numel(p) for p in params if p.requires_grad)
    if dist.is_main():
        log.info(
            "%s: %s trainable parameters of %s (%.1f%%)",
            phase,
            f"{trainable:,}",
            f"{total:,}",
            100.0 * trainable / max(total, 1),
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
        "lineage": [*ctx.lineage, {"phase": phase}],
    }
    with ds.full_parameters(engine.module):
        if dist.is_main():
            write_artifact(path, encoder, tokenizer, {**record, **meta}, max_length, head)
    dist.barrier()
    return path


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
