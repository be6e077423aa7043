"""Streamed training data in one process: exact resume for every kind of batch, the per-example imbalance
correction against the in-memory one, labels, shuffling and configuration checks."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

import helpers
from dcl_dist import dist
from dcl_dist.config import load_config
from dcl_dist.data.balance import class_ratios, corrected_sizes
from dcl_dist.data.batch_plan import BatchPlan
from dcl_dist.data.batching import Tokenize
from dcl_dist.data.contrastive import correction_ratios
from dcl_dist.data.splits import load_splits
from dcl_dist.data.streaming import RankStream, StreamFeed, counting
from dcl_dist.errors import ConfigError, DataError

SIZES = {"weather": 90, "music": 24, "food": 5}


def write_corpus(folder, sizes=SIZES, files=2):
    return helpers.write_corpus(folder, sizes, files)


def stream_config(folder, *overrides):
    return load_config(None, [*helpers.stream_overrides(folder), "data.shuffle_buffer_size=16", *overrides])


@pytest.fixture(scope="module")
def tokenize(minilm):
    from transformers import AutoTokenizer

    return Tokenize(AutoTokenizer.from_pretrained(str(minilm)), 24)


def feed_for(cfg, kind, tokenize, plan=BatchPlan(micro=4, world=1, accumulation=2), num_workers=0):
    stream = load_splits(cfg).stream
    ratios, _ = correction_ratios(cfg, stream.class_counts)
    return StreamFeed(cfg, kind, stream, tokenize, plan, num_workers, ratios)


def run_epochs(feed, epochs, start_at=None, state=None):
    """(batch, state) of every micro-batch up to `epochs` epochs, from start_at = (epoch, step) with `state`."""
    epoch, step = start_at or (0, 0)
    out = []
    while epoch < epochs:
        for batch in feed.batches(epoch, step, state):
            state = batch.pop("data_state")
            out.append((batch, state))
        epoch, step = epoch + 1, 0
    return out


def same_batches(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


KINDS = {
    "dae with unlabelled": ("dae", ["data.unlabelled=UNLABELLED"]),
    "ft": ("ft", []),
    "cl random": ("cl", []),
    "cl class_aware": ("cl", ["cl.batching=class_aware"]),
    "cl pairs": ("cl", ["cl.mode=pair"]),
    "joint class_aware": ("joint", ["cl.batching=class_aware"]),
}


@pytest.mark.parametrize("name", list(KINDS))
def test_resume_anywhere_yields_the_uninterrupted_batches(name, tmp_path, tokenize, monkeypatch):
    kind, extra = KINDS[name]
    write_corpus(tmp_path)
    cfg = stream_config(tmp_path, *[o.replace("UNLABELLED", str(tmp_path / "extra.txt")) for o in extra])
    feed = feed_for(cfg, kind, tokenize)
    spe, accumulation = feed.steps_per_epoch, feed.plan.accumulation
    full = run_epochs(feed, 3)
    assert len(full) == 3 * spe * accumulation
    held = [e for _, state in full for e in state["buffer"] + [e for b in state["sorted"] for e in b]]
    assert len({e.epoch for e in held}) >= 3  # the run crosses pass boundaries (and epoch ones)

    produced = 0
    original = RankStream.next_micro_batch

    def counting(self):
        nonlocal produced
        produced += 1
        return original(self)

    monkeypatch.setattr(RankStream, "next_micro_batch", counting)
    # mid-epoch, the last step of an epoch, exactly at an epoch's end, and in later epochs
    for step in (3, spe - 1, spe, spe + 2, 2 * spe + 1):
        produced = 0
        state = full[step * accumulation - 1][1]
        rest = run_epochs(feed, 3, divmod(step, spe), state)
        assert same_batches([b for b, _ in full[step * accumulation :]], [b for b, _ in rest]), (name, step)
        # no replay: the resumed stream makes only the micro-batches that come after the checkpoint
        assert produced == len(full) - step * accumulation


def test_streamed_dae_and_ft_batches_are_grouped_by_length(tmp_path, tokenize):
    write_corpus(tmp_path, {"weather": 300, "music": 200})

    def slots_per_token(kind, *overrides):
        batches = [b for b, _ in run_epochs(feed_for(stream_config(tmp_path, *overrides), kind, tokenize), 1)]
        masks = [b["decoder_attention_mask" if kind == "dae" else "attention_mask"] for b in batches]
        return sum(m.numel() for m in masks) / sum(m.sum().item() for m in masks)

    for kind in ("ft", "dae"):  # the clean texts: dae's decoder side
        grouped, random = slots_per_token(kind), slots_per_token(kind, "data.group_by_length=false")
        assert grouped < 1.05 and random > 1.15, (kind, grouped, random)  # measured: 1.00 / 1.19-1.26


def test_workers_collate_the_same_batches(tmp_path, tokenize):
    write_corpus(tmp_path)
    cfg = stream_config(tmp_path, "cl.batching=class_aware")
    in_process = run_epochs(feed_for(cfg, "cl", tokenize), 1)
    in_workers = run_epochs(feed_for(cfg, "cl", tokenize, num_workers=1), 1)
    assert same_batches([b for b, _ in in_process], [b for b, _ in in_workers])
    assert [s["micro_batches"] for _, s in in_process] == [s["micro_batches"] for _, s in in_workers]


def read_passes(stream: RankStream, passes: int) -> list[list]:
    """The examples of the stream's first passes (micro-batches of one example until the next pass begins)."""
    out = [[] for _ in range(passes)]
    while True:
        _, (example,) = stream.next_micro_batch()
        if example.epoch == passes:
            return out
        out[example.epoch].append(example)


def test_correction_on_a_stream_matches_the_in_memory_sizes(tmp_path):
    # ratios 1 (big), 1.58 (mid: 100 examples, so a biased coin shows), 2.21, 2.91 and 3.64 (rare)
    sizes = {"big": 2000, "mid": 100, "small": 30, "tiny": 8, "rare": 2}
    write_corpus(tmp_path, sizes, files=1)
    cfg = stream_config(tmp_path, "data.shuffle_buffer_size=64")
    stream = load_splits(cfg).stream
    counts = stream.class_counts
    assert counts == [sizes[n] for n in stream.label_names[0]]
    ratios = class_ratios(counts, 1.5, 4.0)
    in_memory = corrected_sizes(counts, ratios)
    passes = 30
    rank_stream = RankStream(cfg, [stream.source], ["label"], stream.label_names, 1, ratios)
    totals = Counter()
    for examples in read_passes(rank_stream, passes):
        per_class = Counter(e.levels[0] for e in examples)
        originals = Counter(e.levels[0] for e in examples if e.copy == 0)
        assert [originals[c] for c in range(len(counts))] == counts  # every original once per pass
        for c, (n, r) in enumerate(zip(counts, ratios)):
            assert n * math.floor(r) <= per_class[c] <= n * math.ceil(r)
        totals.update(per_class)
    for c, (n, r) in enumerate(zip(counts, ratios)):
        # each pass draws Binomial(n, frac(r)) extra copies on top of n * floor(r): over `passes` passes the mean
        # has standard deviation sqrt(n f (1 - f) / passes); 4 of those (a 1-in-15,000 miss) plus 0.5 for the
        # rounding of the in-memory size is the tolerance. Classes with an integer ratio must match exactly.
        f = r - math.floor(r)
        tolerance = 4 * math.sqrt(n * f * (1 - f) / passes) + 0.5
        assert abs(totals[c] / passes - in_memory[c]) <= tolerance, (stream.label_names[0][c], totals[c] / passes)
    assert sum(totals.values()) / passes == pytest.approx(sum(n * r for n, r in zip(counts, ratios)), rel=0.01)


def test_shuffle_buffer_mixes_reproducibly(tmp_path):
    rows = write_corpus(tmp_path, files=1)
    file_order = [r["text"] for r in rows]

    def texts(*overrides):
        cfg = stream_config(tmp_path, *overrides)
        stream = load_splits(cfg).stream
        (examples,) = read_passes(RankStream(cfg, [stream.source], ["label"], stream.label_names, 1), 1)
        return [e.text for e in examples]

    assert texts("data.shuffle_buffer_size=1") == file_order
    mixed = texts("data.shuffle_buffer_size=32")
    assert sorted(mixed) == sorted(file_order) and mixed != file_order
    assert texts("data.shuffle_buffer_size=32") == mixed
    assert texts("data.shuffle_buffer_size=32", "run.seed=14") != mixed


def test_labels_from_the_config_and_a_label_outside_them(tmp_path, tokenize):
    write_corpus(tmp_path)
    cfg = stream_config(tmp_path, "data.class_counts={weather: 90, music: 24}", "ft.max_steps=40")
    splits = load_splits(cfg)
    assert splits.class_names == ["music", "weather"] and splits.stream.class_counts == [24, 90]
    where = r"train-\*\.jsonl \(record \d+ of rank 0's share, text 'food \d+ [^']*'\)"
    with pytest.raises(DataError, match=where + ": label 'food' is not one of the 2 classes \\(music, weather\\)"):
        run_epochs(feed_for(cfg, "ft", tokenize), 1)


def test_counting_pass_orders_integer_labels_numerically(tmp_path):
    with open(tmp_path / "train-0.jsonl", "w") as f:
        f.writelines(json.dumps({"text": f"text {i}", "label": i % 11}) + "\n" for i in range(44))
    (tmp_path / "validation.jsonl").write_text(json.dumps({"text": "x", "label": 3}) + "\n")
    splits = load_splits(stream_config(tmp_path))
    assert splits.class_names == [str(i) for i in range(11)] and splits.stream.class_counts == [4] * 11
    assert splits.train is None and splits.validation.labels == [3]


def test_stream_length_sets_the_epoch_or_needs_max_steps(tmp_path, tokenize):
    write_corpus(tmp_path)
    extra = f"data.unlabelled={tmp_path / 'extra.txt'}"
    counted = feed_for(stream_config(tmp_path, extra), "dae", tokenize)
    assert counted.items_per_pass == sum(SIZES.values()) + 40
    assert counted.steps_per_epoch == math.ceil((sum(SIZES.values()) + 40) / 8)
    capped = feed_for(stream_config(tmp_path, extra, "dae.max_steps=7"), "dae", tokenize)
    assert capped.items_per_pass is None and capped.steps_per_epoch == 7  # the unlabelled corpus is not counted


def test_streaming_config_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.train=x.jsonl", "data.streaming=true", "data.max_train_examples=10"])
    text = str(err.value)
    assert "'data.validation' is needed with data.streaming" in text and "'data.max_train_examples'" in text
    with pytest.raises(ConfigError, match="'data.class_counts' is only read with data.streaming"):
        load_config(None, ["data.train=x", "data.class_counts={a: 3}"])
    with pytest.raises(ConfigError, match=r"'data.class_counts' must be mapping \(str or int -> int\)"):
        load_config(None, ["data.train=x", "data.streaming=true", "data.validation=y", "data.class_counts=[3]"])


def test_empty_share_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "train-0.jsonl").write_text(json.dumps({"text": "only one", "label": "a"}) + "\n")
    (tmp_path / "validation.jsonl").write_text(json.dumps({"text": "x", "label": "a"}) + "\n")
    cfg = stream_config(tmp_path, "data.class_counts={a: 1}")
    monkeypatch.setattr(dist, "rank", lambda: 1)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    stream = RankStream(cfg, [str(tmp_path / "train-*.jsonl")], ["label"], [["a"]], 1)
    with pytest.raises(DataError, match="rank 1's share of .* holds no records"):
        stream.next_micro_batch()


def test_counts_are_kept_for_a_rerun_over_the_same_files(tmp_path, monkeypatch):
    write_corpus(tmp_path)
    (tmp_path / "run").mkdir()
    cfg = stream_config(tmp_path, f"data.unlabelled={tmp_path / 'extra.txt'}")
    first = load_splits(cfg).stream
    assert first.label_names == [["food", "music", "weather"]] and first.class_counts == [5, 24, 90]
    assert first.unlabelled_records == 40
    counted = []
    read_share = counting.read_share
    monkeypatch.setattr(counting, "read_share", lambda *a: counted.append(a[1]) or read_share(*a))
    assert load_splits(cfg).stream == first and counted == []  # read back from <run.dir>/stream_counts.json
    with open(tmp_path / "train-1.jsonl", "a") as f:
        f.write(json.dumps({"text": "one more", "label": "food"}) + "\n")
    again = load_splits(cfg).stream
    assert again.class_counts[again.label_names[0].index("food")] == SIZES["food"] + 1
    assert str(tmp_path / "train-*.jsonl") in counted


def test_bad_json_in_a_stream_names_the_file_and_line(tmp_path):
    write_corpus(tmp_path, files=1)
    lines = len((tmp_path / "train-0.jsonl").read_text().splitlines())
    with open(tmp_path / "train-0.jsonl", "a") as f:
        f.write('{"text": "broken", "label": \n')
    with pytest.raises(DataError, match=rf"train-0\.jsonl:{lines + 1}: not valid JSON: fix or remove the line"):
        load_splits(stream_config(tmp_path))  # the counting pass meets it first


def test_a_bad_parquet_shard_names_the_source(tmp_path):
    write_corpus(tmp_path, files=1)
    (tmp_path / "train-0.parquet").write_bytes(b"not a parquet file")
    cfg = stream_config(tmp_path, f"data.train={tmp_path / 'train-*.parquet'}")
    with pytest.raises(DataError, match=r"train-\*\.parquet: cannot open it as a stream \(ArrowInvalid: Parquet magic"):
        load_splits(cfg)
