"""Streams on 2 and 3 gloo ranks: disjoint shards that together hold every record, the counting pass summed over
ranks, and a run stopped after a checkpoint that resumes onto the uninterrupted loss curve."""

from __future__ import annotations

from collections import Counter

import pytest

from helpers import read_scalars, stream_overrides, write_corpus
from multiproc.spawn import run_ranks

pytestmark = pytest.mark.multiproc

LABELS = {"weather": 31, "music": 12, "food": 5}


def _rank_pass(folder: str) -> tuple[list[str], list[int], list[str]]:
    """This rank's first pass over its share, and the counting pass's result (summed over ranks)."""
    from pathlib import Path

    from dcl_dist.config import load_config
    from dcl_dist.data.splits import load_splits
    from dcl_dist.data.streaming import RankStream

    cfg = load_config(None, [*stream_overrides(Path(folder)), "data.shuffle_buffer_size=8"])
    stream = load_splits(cfg).stream
    rank_stream = RankStream(cfg, [stream.source], ["label"], stream.label_names, micro=1)
    texts = []
    while True:
        _, (example,) = rank_stream.next_micro_batch()
        if example.epoch == 1:
            return texts, stream.class_counts, stream.label_names[0]
        texts.append(example.text)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_and_complete(world, tmp_path):
    # 4 files: on 2 ranks each reads 2 whole files, on 3 ranks every rank reads all and keeps every third record
    rows = write_corpus(tmp_path, LABELS, files=4)
    results = run_ranks(_rank_pass, world, tmp_path, str(tmp_path))
    shares = [Counter(texts) for texts, _, _ in results]
    assert all(shares)  # every rank has records
    for a in range(world):
        for b in range(a + 1, world):
            assert not shares[a].keys() & shares[b].keys()
    assert sum(shares, Counter()) == Counter(r["text"] for r in rows)  # each record exactly once
    for _, counts, names in results:  # the counting pass: the same totals on every rank
        assert dict(zip(names, counts)) == LABELS


STEPS = 9
CHECKPOINT_EVERY = 4
CRASH_AFTER = 6
"""On 2 ranks x micro 4, phase dae's 48 + 16 records make 8 steps an epoch: the run crosses an epoch,
checkpoints at step 4 and 8, is stopped after step 6 and resumes from step 4. (Phase cl's stream state, with its
copies and class-aware groups, is checked batch for batch in tests/unit/test_streaming.py.)"""


class Crash(Exception):
    """Stands for a killed job: raised on every rank after step CRASH_AFTER, before its checkpoint."""


def _train_dae(model_dir: str, folder: str, run_dir: str, crash: bool) -> int:
    """Train phase dae (stopped after CRASH_AFTER steps if crash); returns the micro-batches the stream made."""
    from pathlib import Path

    from dcl_dist import monitor
    from dcl_dist.config import load_config
    from dcl_dist.data.streaming import RankStream
    from dcl_dist.pipeline import run_variant

    cfg = load_config(
        None,
        [
            *stream_overrides(Path(folder)),
            "data.shuffle_buffer_size=8",
            f"data.unlabelled={Path(folder) / 'extra.txt'}",
            f"run.dir={run_dir}",
            f"model.name_or_path={model_dir}",
            "model.max_length=24",
            "dae.epochs=2",
            f"dae.max_steps={STEPS}",
            "dae.micro_batch_size_per_rank=4",
            "dae.log_every_steps=1",
            "dae.lr=1e-3",
            f"checkpoint.every_steps={CHECKPOINT_EVERY}",
            "checkpoint.keep_last=3",
            "logging.progress_bar=false",
        ],
    )
    advance = monitor.Monitor.advance

    def advance_then_crash(self, loss):
        advance(self, loss)
        self.steps_seen = getattr(self, "steps_seen", 0) + 1
        if self.steps_seen == CRASH_AFTER:
            raise Crash

    made = 0
    next_micro_batch = RankStream.next_micro_batch

    def counted(self):
        nonlocal made
        made += 1
        return next_micro_batch(self)

    monitor.Monitor.advance = advance_then_crash if crash else advance
    RankStream.next_micro_batch = counted
    try:
        run_variant(cfg, only_phase="dae")
    except Crash:
        pass
    finally:
        monitor.Monitor.advance, RankStream.next_micro_batch = advance, next_micro_batch
    return made


def _whole_and_stopped(model_dir: str, folder: str) -> None:
    _train_dae(model_dir, folder, f"{folder}/whole", crash=False)
    _train_dae(model_dir, folder, f"{folder}/stopped", crash=True)


@pytest.mark.slow
def test_stopped_and_resumed_run_follows_the_uninterrupted_loss_curve(tmp_path, tiny_model_nodrop):
    write_corpus(tmp_path, {"weather": 30, "music": 12, "food": 6}, files=2, unlabelled=16)
    model, folder = str(tiny_model_nodrop), str(tmp_path)
    run_ranks(_whole_and_stopped, 2, tmp_path, model, folder)
    stopped = tmp_path / "stopped" / "dae"
    assert sorted(p.name for p in (stopped / "checkpoints").glob("step_*")) == ["step_00000004"]
    assert not (stopped / "artifact").exists()
    # the same command again, in new processes, resumes from the step-4 checkpoint, and its streams make only
    # the micro-batches of steps 5-9 (no replay of steps 1-4)
    assert run_ranks(_train_dae, 2, tmp_path, model, folder, f"{folder}/stopped", False) == [STEPS - 4] * 2
    whole = read_scalars(tmp_path / "whole" / "tb" / "dae", "dae/loss")
    resumed = read_scalars(tmp_path / "stopped" / "tb" / "dae", "dae/loss")
    assert [s for s, _ in whole] == list(range(1, STEPS + 1))
    assert [s for s, _ in resumed] == [s for s, _ in whole]
    for (step, a), (_, b) in zip(whole, resumed):
        assert b == pytest.approx(a, rel=1e-6), (step, whole, resumed)
