"""Where a phase's training batches come from: one Feed per phase (steps_per_epoch, and each epoch's micro-batches
from a step on), read from the split in memory or from the stream (data.streaming) alike.

Either way an epoch's batches are a function of (seed, epoch) alone and are cut into global batches before
they are split over ranks (data/batching.py), so the loop can resume any step on any number of ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from dcl_dist import dist
from dcl_dist.config import Config
from dcl_dist.data.batch_plan import BatchPlan, accumulation_steps
from dcl_dist.data.batching import (
    DaeCollate,
    FtCollate,
    Noise,
    TextSource,
    Tokenize,
    epoch_order,
    length_grouped,
    make_loader,
)
from dcl_dist.data.contrastive import ContrastiveBatches, correction, correction_ratios
from dcl_dist.data.splits import load_unlabelled
from dcl_dist.data.streaming import StreamFeed
from dcl_dist.loop import Feed
from dcl_dist.phases.context import PhaseContext

UNLABELLED_ID_OFFSET = 1 << 40
"""Sample ids of data.unlabelled texts start here, apart from train's (noise keys must not collide)."""


@dataclass
class MemoryFeed:
    """Batches of a split held in memory: each epoch's item order and collator, cut into steps by the batch plan."""

    plan: BatchPlan
    n_items: int
    collate_and_order: Callable[[int], tuple[Callable, list[int]]]
    """epoch -> (the collator of its micro-batches of item indices, the epoch's order of items)."""
    num_workers: int
    steps_per_epoch: int = field(init=False)

    def __post_init__(self) -> None:
        self.steps_per_epoch = self.plan.steps(self.n_items)

    def batches(self, epoch: int, start: int, data_state: None = None) -> Iterable[dict]:
        """This rank's micro-batches of an epoch from step `start` on (collated in workers on a GPU host)."""
        collate, order = self.collate_and_order(epoch)
        micro_batches = self.plan.micro_batches(order, dist.rank(), start, self.steps_per_epoch)
        return make_loader(micro_batches, collate, self.num_workers)


def dae_feed(ctx: PhaseContext, tokenize: Tokenize, noise: Noise) -> Feed:
    """Phase dae: the train texts and data.unlabelled's, noised anew each epoch (labels unused)."""
    cfg = ctx.cfg
    if ctx.splits.stream is not None:
        return stream_feed(ctx, "dae", tokenize)
    train, extra = ctx.splits.train, load_unlabelled(cfg)
    ids = train.ids + [UNLABELLED_ID_OFFSET + i for i in range(len(extra))]
    source = TextSource(train.texts + extra, None, ids)
    plan = batch_plan(cfg, "dae")
    lengths = tokenize.lengths(source.texts) if cfg.data.group_by_length else []

    def collate_and_order(epoch: int) -> tuple[Callable, list[int]]:
        return DaeCollate(tokenize, source, noise, epoch), shuffled_order(cfg, plan, len(source.texts), lengths, epoch)

    return MemoryFeed(plan, len(source.texts), collate_and_order, num_workers(cfg))


def ft_feed(ctx: PhaseContext, tokenize: Tokenize) -> Feed:
    """Phase ft: the labelled train texts."""
    cfg = ctx.cfg
    if ctx.splits.stream is not None:
        return stream_feed(ctx, "ft", tokenize)
    train = ctx.splits.train
    source = TextSource(train.texts, train.levels, train.ids)
    plan = batch_plan(cfg, "ft")
    lengths = tokenize.lengths(train.texts) if cfg.data.group_by_length else []

    def collate_and_order(epoch: int) -> tuple[Callable, list[int]]:
        return FtCollate(tokenize, source), shuffled_order(cfg, plan, len(train), lengths, epoch)

    return MemoryFeed(plan, len(train), collate_and_order, num_workers(cfg))


def contrastive_feed(ctx: PhaseContext, phase: str, tokenize: Tokenize, with_dae: bool = False) -> tuple[Feed, dict]:
    """(feed, imbalance-correction record) of phase cl or joint: the corrected set in memory, or the stream
    corrected one example at a time; with_dae adds the denoising inputs of the same texts (joint)."""
    cfg = ctx.cfg
    if ctx.splits.stream is not None:
        ratios, record = correction_ratios(cfg, ctx.splits.stream.class_counts)
        return stream_feed(ctx, phase, tokenize, ratios), record
    entries, record = correction(cfg, ctx.splits.train, len(ctx.splits.class_names))
    plan = batch_plan(cfg, phase)
    contrast = ContrastiveBatches(cfg, ctx.splits.train, entries, tokenize, plan.global_batch, with_dae)
    return MemoryFeed(plan, contrast.n_items, contrast.collate_and_order, num_workers(cfg)), record


def stream_feed(ctx: PhaseContext, phase: str, tokenize: Tokenize, ratios: list[float] | None = None) -> StreamFeed:
    """The phase's training batches read from the stream; ratios: the imbalance correction's (cl, joint)."""
    cfg = ctx.cfg
    return StreamFeed(cfg, phase, ctx.splits.stream, tokenize, batch_plan(cfg, phase), num_workers(cfg), ratios)


def batch_plan(cfg: Config, phase: str) -> BatchPlan:
    p = getattr(cfg, phase)
    world = dist.world_size()
    return BatchPlan(p.micro_batch_size_per_rank, world, accumulation_steps(cfg, phase, world))


def num_workers(cfg: Config) -> int:
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    return min(2, os.cpu_count() or 1) if torch.cuda.is_available() else 0


def shuffled_order(cfg: Config, plan: BatchPlan, n: int, lengths: list[int], epoch: int) -> list[int]:
    """An epoch's order of n items: a (seed, epoch) permutation, grouped by length (tokens per item) if asked."""
    order = epoch_order(n, cfg.run.seed, epoch)
    if cfg.data.group_by_length:
        order = length_grouped(order, lengths, plan.global_batch, cfg.run.seed, epoch)
    return order
