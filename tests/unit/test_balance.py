import math
import random
from collections import Counter

import pytest

from dcl_dist.data.balance import class_ratios, corrected_entries, corrected_sizes, make_pairs, oversampling_factor


def test_factor_follows_the_formula():
    assert oversampling_factor(10, 1000, 4.0) == pytest.approx(4 * math.log(100) / math.log(1000))
    assert oversampling_factor(10, 1000, 4.0) == pytest.approx(2.667, abs=1e-3)
    assert oversampling_factor(1, 1000, 4.0) == pytest.approx(4.0)
    # f(x) = 1 at x = M^((max_ratio - 1) / max_ratio)
    assert oversampling_factor(1000**0.75, 1000, 4.0) == pytest.approx(1.0)


def test_ratios_below_min_ratio_are_untouched():
    counts = [1000, 10, 100, 500]
    ratios = class_ratios(counts, min_ratio=1.5, max_ratio=4.0)
    assert ratios[0] == 1.0  # the largest class: f = 0
    assert ratios[1] == pytest.approx(2.667, abs=1e-3)
    assert oversampling_factor(100, 1000, 4.0) == pytest.approx(1.333, abs=1e-3)
    assert ratios[2] == 1.0  # f = 1.333 is under min_ratio 1.5
    assert ratios[3] == 1.0
    assert corrected_sizes(counts, ratios) == [1000, 27, 100, 500]


def test_no_correction_for_one_class_or_tiny_data():
    assert class_ratios([50], 1.5, 4.0) == [1.0]
    assert class_ratios([1, 1, 1], 1.5, 4.0) == [1.0, 1.0, 1.0]


def test_entries_keep_originals_and_spread_copies():
    labels = [0] * 100 + [1] * 10 + [2] * 3
    ratios = class_ratios([100, 10, 3], 1.5, 4.0)
    entries = corrected_entries(labels, ratios, seed=1)
    originals = [e for e in entries if e.copy == 0]
    assert sorted(e.index for e in originals) == list(range(len(labels)))
    per_class = Counter(labels[e.index] for e in entries)
    assert [per_class[c] for c in range(3)] == corrected_sizes([100, 10, 3], ratios)
    copies_of = Counter(e.index for e in entries if e.copy > 0)
    for c in (1, 2):
        members = [i for i, label in enumerate(labels) if label == c]
        counts = [copies_of.get(i, 0) for i in members]
        assert max(counts) - min(counts) <= 1  # spread evenly


def test_pairs_have_no_self_pair_and_no_repeat():
    rng = random.Random(0)
    sources = [i // 3 for i in range(300)]  # each example with two copies
    pairs = make_pairs(sources, rng)
    assert len(pairs) >= 295
    assert all(sources[a] != sources[b] for a, b in pairs)
    unordered = [tuple(sorted(p)) for p in pairs]
    assert len(unordered) == len(set(unordered))


def test_pairs_on_tiny_sets_still_valid():
    for seed in range(20):
        pairs = make_pairs([0, 0, 1], random.Random(seed))
        assert all([0, 0, 1][a] != [0, 0, 1][b] for a, b in pairs)
        assert len({tuple(sorted(p)) for p in pairs}) == len(pairs)


def test_a_class_with_one_example_still_gets_pairs():
    labels = [0] * 60 + [1] * 1  # class 1 has a single example: its copies cannot pair with it
    ratios = class_ratios([60, 1], 1.5, 4.0)
    assert ratios[1] == pytest.approx(4.0)
    entries = corrected_entries(labels, ratios, seed=3)
    sources = [e.index for e in entries]
    assert sources.count(60) == 4  # the original and three copies
    for seed in range(5):
        pairs = make_pairs(sources, random.Random(seed))
        with_it = [(a, b) for a, b in pairs if 60 in (sources[a], sources[b])]
        assert len(with_it) >= 4  # every copy is paired, each with an example of the other class
        assert all(sources[a] != sources[b] for a, b in with_it)


def test_each_position_is_a_second_element_at_most_once():
    """Mending the last position by a swap with an earlier one used to give that earlier partner a second pair
    (and leave the last position's partner out): each position is the first element of at most one pair and the
    second of at most one, and nothing is dropped where a valid partner exists."""
    failures = []
    for seed in range(300):
        rng = random.Random(seed)
        n = rng.randrange(4, 40)
        sources = [rng.randrange(max(2, n // 2)) for _ in range(n)]  # repeated sources force mends
        pairs = make_pairs(sources, random.Random(seed))
        seconds = Counter(b for _, b in pairs)
        firsts = Counter(a for a, _ in pairs)
        if max(seconds.values(), default=0) > 1 or max(firsts.values(), default=0) > 1:
            failures.append((seed, n))
        assert all(sources[a] != sources[b] for a, b in pairs)
        assert len({tuple(sorted(p)) for p in pairs}) == len(pairs)
    assert not failures, f"a position paired twice as a second element: {failures[:5]}"


def test_a_conflict_at_the_last_position_keeps_every_pair():
    """The last position's first element equals its partner's source: it must trade partners with an earlier pair
    (both pairs staying valid), not reuse that earlier pair's partner."""
    for seed in range(200):
        sources = list(range(12)) + [0]  # position 12 is a copy of example 0: it may meet position 0 last
        pairs = make_pairs(sources, random.Random(seed))
        assert len(pairs) == len(sources), seed  # a valid partner always exists here
        assert sorted(b for _, b in pairs) == list(range(len(sources))), seed
        assert sorted(a for a, _ in pairs) == list(range(len(sources))), seed
