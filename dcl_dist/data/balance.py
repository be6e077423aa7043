"""The imbalance correction of section 3.2.1 (docs/METHOD.md) and the pair construction of phase cl's pair mode."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass


def oversampling_factor(n: int, largest: int, max_ratio: float) -> float:
    """f(n) = ln(M / n) * max_ratio / ln(M): max_ratio for one example, 1 at n = M^((max_ratio - 1) / max_ratio)."""
    return math.log(largest / n) * max_ratio / math.log(largest)


def class_ratios(counts: list[int], min_ratio: float, max_ratio: float) -> list[float]:
    """Oversampling ratio per class: f(n_k) where f(n_k) >= min_ratio, else 1 (our reading of eq. 5).

    No correction (all 1) with fewer than two non-empty classes or when the largest class has one example.
    """
    present = [n for n in counts if n > 0]
    largest = max(present, default=0)
    if len(present) < 2 or largest <= 1:
        return [1.0] * len(counts)
    ratios = []
    for n in counts:
        f = oversampling_factor(n, largest, max_ratio) if n > 0 else 1.0
        ratios.append(f if f >= min_ratio else 1.0)
    return ratios


def corrected_sizes(counts: list[int], ratios: list[float]) -> list[int]:
    """new_n_k = round(ratio_k * n_k)."""
    return [round(r * n) for n, r in zip(counts, ratios)]


def stream_copies(ratio: float, u: float) -> int:
    """Copies a stream emits of one example of a class with this ratio (the original included), u uniform in [0, 1).

    floor(ratio) copies, plus one more with probability frac(ratio) (docs/METHOD.md): in expectation ratio_k * n_k
    per class, the size the in-memory correction gives, without knowing the example's place in its class.
    """
    whole = math.floor(ratio)
    return whole + (1 if u < ratio - whole else 0)


@dataclass(frozen=True)
class Entry:
    """One element of the corrected set: an example (by index) and which copy of it; copy 0 is the original."""

    index: int
    copy: int


def corrected_entries(labels: list[int], ratios: list[float], seed: int) -> list[Entry]:
    """The originals plus round(ratio_k * n_k) - n_k extra copies per class, spread evenly over the class.

    Extra copy j of a class goes to its (j mod n_k)-th member in a seeded order, so every member gets
    floor or ceil of (ratio_k - 1) copies.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    entries = [Entry(i, 0) for i in range(len(labels))]
    rng = random.Random(seed)
    for label in sorted(by_class):
        members = by_class[label][:]
        extra = round(ratios[label] * len(members)) - len(members)
        rng.shuffle(members)
        entries += [Entry(members[j % len(members)], 1 + j // len(members)) for j in range(extra)]
    return entries


def make_pairs(sources: list[int], rng: random.Random, max_tries: int = 64) -> list[tuple[int, int]]:
    """Pairs (a, b) of positions 0..N-1 from two shuffled copies: no self-pair, no repeated unordered pair.

    `sources[i]` names the example position i came from: positions of the same example (an original and its
    copies) are never paired either. Every position is the first element of at most one pair and the second of
    at most one. A pair that cannot be mended in max_tries swaps is dropped (tiny sets only).
    """
    n = len(sources)
    first = list(range(n))
    second = list(range(n))
    rng.shuffle(first)
    rng.shuffle(second)
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    pair_at: dict[int, int] = {}
    """Step i -> index in pairs of the pair it made (steps whose pair was dropped are absent)."""

    def key(a: int, b: int) -> tuple[int, int]:
        return min(a, b), max(a, b)

    def ok(a: int, b: int) -> bool:
        return sources[a] != sources[b] and key(a, b) not in seen

    def trade(i: int, j: int) -> bool:
        """Step i takes earlier step j's partner and j takes i's, if both pairs stay valid (a swap alone would
        leave j's recorded pair pointing at the partner i now uses: one position paired twice, one never)."""
        a, c, b, d = first[i], first[j], second[j], second[i]
        if j not in pair_at:  # step j's pair was dropped: its partner is free
            return ok(a, b)
        seen.discard(key(c, b))
        if ok(a, b) and ok(c, d) and key(a, b) != key(c, d):
            pairs[pair_at[j]] = (c, d)
            seen.add(key(c, d))
            return True
        seen.add(key(c, b))
        return False

    def mend(i: int) -> bool:
        """Give step i a valid partner: a swap with a step not yet taken, failing that (the last steps) a trade."""
        if i + 1 < n:
            for _ in range(max_tries):
                j = rng.randrange(i + 1, n)
                if ok(first[i], second[j]):
                    second[i], second[j] = second[j], second[i]
                    return True
        if i > 0:
            for _ in range(max_tries):
                j = rng.randrange(i)
                if trade(i, j):
                    second[i], second[j] = second[j], second[i]
                    return True
        return False

    for i in range(n):
        a = first[i]
        if not ok(a, second[i]) and not mend(i):
            continue
        b = second[i]
        seen.add(key(a, b))
        pair_at[i] = len(pairs)
        pairs.append((a, b))
    return pairs
