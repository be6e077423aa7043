"""What a phase hands the loop from the stream: steps per epoch, and each epoch's collated micro-batches,
each with the stream's state once it is consumed (the loop checkpoints it)."""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from dcl_dist import dist
from dcl_dist.config import Config
from dcl_dist.data.balance import make_pairs
from dcl_dist.data.batch_plan import BatchPlan
from dcl_dist.data.batching import Example, Items, Noise, Tokenize, cl_batch, dae_batch, ft_batch, pair_batch
from dcl_dist.data.noise import keyed_rng
from dcl_dist.data.streaming.counting import TrainStream
from dcl_dist.data.streaming.rank_stream import RankStream
from dcl_dist.errors import DataError
from dcl_dist.seeds import STREAM_PAIRS

log = logging.getLogger(__name__)


class StreamCollate:
    """(micro-batch number, Examples) -> tensors, for one kind of phase (picklable: it runs in DataLoader workers)."""

    def __init__(self, kind: str, tokenize: Tokenize, noise: Noise, pairs: bool, seed: int, rank: int):
        self.kind, self.tokenize, self.noise, self.pairs, self.seed, self.rank = (
            kind,
            tokenize,
            noise,
            pairs,
            seed,
            rank,
        )

    def __call__(self, payload: tuple[int, list[Example]]) -> dict[str, torch.Tensor]:
        number, examples = payload
        if self.kind == "dae":
            return dae_batch(self.tokenize, self.noise, examples)
        if self.kind == "ft":
            return ft_batch(self.tokenize, examples)
        with_dae = self.kind == "joint"
        if not self.pairs:
            return cl_batch(self.tokenize, self.noise, examples, with_dae)
        # pair mode pairs the micro-batch's examples (two shuffled copies of it, never an example with its copies)
        pairs = make_pairs([e.id for e in examples], keyed_rng(self.seed, STREAM_PAIRS, self.rank, number))
        first, second = [examples[a] for a, _ in pairs], [examples[b] for _, b in pairs]
        return pair_batch(self.tokenize, self.noise, first, second, with_dae)


class StreamFeed:
    """A phase's training batches from the stream: steps per epoch, and each epoch's micro-batches for the loop.

    kind is the phase: dae (train and data.unlabelled texts), ft (labelled), cl or joint (labelled, corrected
    for imbalance one example at a time, batched in_batch / class_aware / in pairs as cl.* says).
    """

    def __init__(
        self,
        cfg: Config,
        kind: str,
        stream: TrainStream,
        tokenize: Tokenize,
        plan: BatchPlan,
        num_workers: int,
        ratios: list[float] | None = None,
    ):
        self.cfg, self.kind, self.stream, self.plan, self.num_workers = cfg, kind, stream, plan, num_workers
        contrastive = kind in ("cl", "joint")
        # as in memory: contrastive batches keep their mix (in-batch negatives, pairs drawn within a micro-batch)
        self.lengths = tokenize.lengths if cfg.data.group_by_length and not contrastive else None
        self.ratios = ratios if contrastive else None
        self.sources = [stream.source, *stream.unlabelled] if kind == "dae" else [stream.source]
        self.label_fields = [] if kind == "dae" else [cfg.data.label_field, *cfg.data.hierarchy_fields]
        class_aware = contrastive and cfg.cl.mode == "in_batch" and cfg.cl.batching == "class_aware"
        self.group = cfg.cl.examples_per_class if class_aware else None
        pairs = contrastive and cfg.cl.mode == "pair"
        self.samples_per_item = 2 if pairs else 1
        noise = Noise(cfg.run.seed, cfg.dae.deletion_ratio, cfg.cl.copy_stopword_deletion, cfg.cl.copy_min_words)
        self.collate = StreamCollate(kind, tokenize, noise, pairs, cfg.run.seed, dist.rank())
        self.datasets: dict[str, Any] = {}
        self.items_per_pass = self._items_per_pass()
        p = getattr(cfg, kind)
        if self.items_per_pass is not None:
            self.steps_per_epoch = max(1, math.ceil(self.items_per_pass / plan.global_batch))
        elif p.max_steps is not None:
            self.steps_per_epoch = p.max_steps  # the length of the stream is unknown: one epoch of max_steps
        else:
            raise DataError(
                f"phase {kind}: the stream's length is unknown, so its learning-rate schedule has no end: set"
                f" {kind}.max_steps, or let the counting pass run (remove {kind}.max_steps and data.class_counts)"
            )

    def _items_per_pass(self) -> int | None:
        """Examples one pass over every rank's share yields (expected, with the correction's random copies)."""
        s = self.stream
        if self.kind == "dae":
            if s.unlabelled and s.unlabelled_records is None:
                return None
            return s.records + (s.unlabelled_records or 0)
        if self.ratios is not None:
            return round(sum(n * r for n, r in zip(s.class_counts, self.ratios)))
        return s.records

    def rank_stream(self) -> RankStream:
        return RankStream(
            self.cfg,
            self.sources,
            self.label_fields,
            self.stream.label_names,
            self.plan.micro,
            self.ratios,
            self.group,
            self.datasets,
            self.lengths,
        )

    def batches(self, epoch: int, start: int, data_state: dict | None = None) -> Iterator[dict]:
        """This rank's micro-batches of an epoch from step `start` on, each with the stream's state once consumed."""
        first = (epoch * self.steps_per_epoch + start) * self.plan.accumulation
        count = (self.steps_per_epoch - start) * self.plan.accumulation
        stream = self.rank_stream()
        if data_state is not None and data_state.get("micro_batches") == first:
            stream.restore(data_state)
        elif first > 0:
            # only when the checkpoint has no state for this rank (it was written by another world size)
            log.warning(
                "rank %d: no stream state for micro-batch %d (checkpoint from another world size?): reading the stream"
                " from its start up to there; the batches differ from the run that wrote the checkpoint",
                dist.rank(),
                first,
            )
            for _ in range(first):
                stream.next_micro_batch()
        return stream_loader(stream, count, self.collate, self.num_workers)


def stream_loader(stream: RankStream, count: int, collate: StreamCollate, num_workers: int) -> Iterator[dict]:
    """`count` collated micro-batches of a stream, each with its "data_state" (workers collate when num_workers > 0).

    The stream runs in this process (it is one sequence whose state must be exact); workers only add noise and
    tokenise. The states wait here, in order, and never travel to the workers.
    """

    def payloads() -> Iterator[tuple[int, list[Example]]]:
        for _ in range(count):
            payload = stream.next_micro_batch()
            states.append(stream.snapshot())
            yield payload

    states: collections.deque[dict] = collections.deque()
    if num_workers == 0:
        for payload in payloads():
            yield {**collate(payload), "data_state": states.popleft()}
        return
    loader = DataLoader(
        Items(),
        sampler=payloads(),
        batch_size=None,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
    for batch in loader:
        yield {**batch, "data_state": states.popleft()}
