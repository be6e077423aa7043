"""Phases cl and joint with cl.embed_chunk_size end to end: the same loss curve as one pass (a model without
dropout), through the config, the batches' source ids and the engine. Each run in a process of its own (one
gloo rank): DeepSpeed keeps process groups in module state that a later in-process test must not inherit."""

from __future__ import annotations

import pytest

from multiproc.spawn import run_ranks

pytestmark = pytest.mark.integration


def _curve(model: str, train: str, run_dir: str, phase: str, chunk: str) -> list[tuple[int, float]]:
    from pathlib import Path

    from dcl_dist.config import load_config
    from dcl_dist.pipeline import run_variant
    from helpers import read_scalars, tiny_run

    cfg = load_config(
        None,
        tiny_run(
            model,
            train,
            run_dir,
            f"run.variant={'cl_ft' if phase == 'cl' else 'joint'}",
            f"cl.embed_chunk_size={chunk}",
            "cl.imbalance=extra",
            f"{phase}.max_steps=3",
            f"{phase}.micro_batch_size_per_rank=8",
            f"{phase}.log_every_steps=1",
            f"{phase}.lr=1e-3",
        ),
    )
    run_variant(cfg, only_phase=phase)
    return read_scalars(Path(run_dir) / "tb" / phase, f"{phase}/loss")


@pytest.mark.parametrize("phase", ["cl", pytest.param("joint", marks=pytest.mark.slow)])
def test_cached_chunks_give_the_same_loss_curve(phase, tiny_model_nodrop, snips_small, tmp_path):
    curves = {
        chunk: run_ranks(
            _curve, 1, tmp_path, str(tiny_model_nodrop), str(snips_small), str(tmp_path / chunk), phase, chunk
        )[0]
        for chunk in ("null", "3")
    }
    plain, cached = curves["null"], curves["3"]
    assert [s for s, _ in plain] == [1, 2, 3]
    assert [s for s, _ in cached] == [1, 2, 3]
    for (_, a), (_, b) in zip(plain, cached):
        assert b == pytest.approx(a, rel=1e-5), (plain, cached)
