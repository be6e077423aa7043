"""Streams on 2 and 3 gloo ranks: disjoint shards that together hold every record, the counting pass summed over
ranks, and a run stopped after a checkpoint that resumes onto the uninterrupted loss curve."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from multiproc.spawn import run_ranks
from tb import read_scalars

pytestmark = pytest.mark.multiproc

LABELS = {"weather": 31, "music": 12, "food": 5}
WORDS = "the a of to is it please play book find show me what some new old song table rain".split()


def write_shards(folder, files: int, sizes=LABELS) -> list[dict]:
    """Labelled jsonl shards of unequal sizes (and a validation file); returns every row."""
    rng = random.Random(0)
    rows = [
        {"text": f"{label} {i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))), "label": label}
        for label, n in sizes.items()
        for i in range(n)
    ]
    rng.shuffle(rows)
    cuts = sorted(rng.sample(range(1, len(rows)), files - 1))
    for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(rows)])):
        (folder / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[a:b]))
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:9]))
    (folder / "extra.txt").write_text("".join(f"more {r['text']}\n" for r in rows[:16]))
    return rows


def stream_overrides(folder) -> list[str]:
    return [
        f"data.train={folder / 'part-*.jsonl'}",
        f"data.validation={folder / 'validation.jsonl'}",
        "data.streaming=true",
        "data.shuffle_buffer_size=8",
    ]


def _rank_pass(folder: str) -> tuple[list[str], list[int], list[str]]:
    """This rank's first pass over its share, and the counting pass's result (summed over ranks)."""
    from pathlib import Path

    from dcl_dist.config import load_config
    from dcl_dist.data.splits import load_splits
    from dcl_dist.data.streaming import RankStream

    cfg = load_config(None, [*stream_overrides(Path(folder)), f"run.dir={folder}/run"])
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
    rows = write_shards(tmp_path, files=4)
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
"""On 2 ranks x micro 4, dae's 48 + 16 records make 8 steps an epoch (cl's corrected set about as many): the
run crosses an epoch, checkpoints at step 4 and 8, is stopped after step 6 and resumes from step 4."""


class Crash(Exception):
    """Stands for a killed job: raised on every rank after step CRASH_AFTER, before its checkpoint."""


def _train(model_dir: str, folder: str, run_dir: str, phase: str, crash: bool) -> None:
    from pathlib import Path

    from dcl_dist import loop
    from dcl_dist.config import load_config
    from dcl_dist.pipeline import run_variant

    cfg = load_config(
        None,
        [
            *stream_overrides(Path(folder)),
            f"data.unlabelled={Path(folder) / 'extra.txt'}",
            f"run.dir={run_dir}",
            f"run.variant={'three_phase' if phase == 'dae' else 'cl_ft'}",
            f"model.name_or_path={model_dir}",
            "model.max_length=24",
            f"{phase}.epochs=2",
            f"{phase}.max_steps={STEPS}",
            f"{phase}.micro_batch_size_per_rank=4",
            f"{phase}.log_every_steps=1",
            f"{phase}.lr=1e-3",
            "cl.batching=class_aware",
            f"checkpoint.every_steps={CHECKPOINT_EVERY}",
            "checkpoint.keep_last=3",
            "logging.progress_bar=false",
        ],
    )
    if crash:
        advance = loop.Logger.advance

        def advance_then_crash(self, loss):
            advance(self, loss)
            self.steps_seen = getattr(self, "steps_seen", 0) + 1
            if self.steps_seen == CRASH_AFTER:
                raise Crash

        loop.Logger.advance = advance_then_crash
    try:
        run_variant(cfg, only_phase=phase)
    except Crash:
        pass
    finally:
        if crash:
            loop.Logger.advance = advance


def _train_both(model_dir: str, folder: str, tmp: str, name: str, crash: bool) -> None:
    for phase in ("dae", "cl"):
        _train(model_dir, folder, f"{tmp}/{phase}-{name}", phase, crash)


def test_stopped_and_resumed_run_follows_the_uninterrupted_loss_curve(tmp_path, tiny_model_nodrop):
    write_shards(tmp_path, files=2, sizes={"weather": 30, "music": 12, "food": 6})
    model, folder = str(tiny_model_nodrop), str(tmp_path)
    run_ranks(_train_both, 2, tmp_path, model, folder, str(tmp_path), "whole", False)
    run_ranks(_train_both, 2, tmp_path, model, folder, str(tmp_path), "stopped", True)
    for phase in ("dae", "cl"):
        stopped = tmp_path / f"{phase}-stopped" / phase
        assert sorted(p.name for p in (stopped / "checkpoints").glob("step_*")) == ["step_00000004"]
        assert not (stopped / "artifact").exists()
    # the same command again, in new processes, resumes from the step-4 checkpoint
    run_ranks(_train_both, 2, tmp_path, model, folder, str(tmp_path), "stopped", False)
    for phase in ("dae", "cl"):
        whole = read_scalars(tmp_path / f"{phase}-whole" / "tb" / phase, f"{phase}/loss")
        resumed = read_scalars(tmp_path / f"{phase}-stopped" / "tb" / phase, f"{phase}/loss")
        assert [s for s, _ in whole] == list(range(1, STEPS + 1))
        assert [s for s, _ in resumed] == [s for s, _ in whole], phase
        for (step, a), (_, b) in zip(whole, resumed):
            assert b == pytest.approx(a, rel=1e-6), (phase, step, whole, resumed)
