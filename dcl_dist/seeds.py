"""Every seeded random stream of a run, by name: each draws from a key of run.seed (and the epoch, or a sample).

A stream's key must never change: a resumed run, or the same run on another number of ranks, redraws the
same numbers from it, and the exact-resume tests compare them bit for bit. Where two uses draw from one
stream, its docstring names both.
"""

from __future__ import annotations

import random

import numpy as np

EPOCH_STRIDE = 1_000_003
LENGTH_SHUFFLE_STRIDE = 1_000_033
"""Keys of the per-epoch random.Random streams below: seed * stride + epoch, one prime stride per stream."""

# Namespaces of data.noise.keyed_rng / keyed_int / keyed_uniform, whose keys are (seed, namespace, ...).
NOISE_DAE = 1
"""TSDAE deletion noise: (seed, NOISE_DAE, sample id, copy, epoch)."""
NOISE_COPY = 2
"""Stop-word noise of the imbalance correction's extra copies: (seed, NOISE_COPY, sample id, copy, epoch)."""
STREAM_BUFFER = 3
"""A stream's shuffle-buffer draws: (seed, STREAM_BUFFER, rank, pass, draw)."""
STREAM_COPIES = 4
"""How many copies the imbalance correction makes of a streamed example: (seed, STREAM_COPIES, sample id, pass)."""
STREAM_PAIRS = 5
"""Pair mode's pairing of a streamed micro-batch: (seed, STREAM_PAIRS, rank, micro-batch number)."""
STREAM_LENGTH_WINDOWS = 6
"""The order of a stream's length-sorted micro-batches within a window: (seed, STREAM_LENGTH_WINDOWS, window);
every rank draws the same, so that the ranks' micro-batches of one step have similar lengths."""


def epoch_permutation_rng(seed: int, epoch: int) -> np.random.Generator:
    """An in-memory epoch's order of items."""
    return np.random.default_rng([seed, epoch])


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """An epoch's pairs (cl.mode pair) or class-aware groups (cl.batching class_aware): a phase draws one of them."""
    return random.Random(seed * EPOCH_STRIDE + epoch)


def length_shuffle_rng(seed: int, epoch: int) -> random.Random:
    """The order of an epoch's length-grouped global batches (data.group_by_length)."""
    return random.Random(seed * LENGTH_SHUFFLE_STRIDE + epoch)


def validation_subset_rng(seed: int) -> np.random.Generator:
    """Fixed subsets of the validation split: the contrastive loss's examples, the projector's points."""
    return np.random.default_rng(seed)
