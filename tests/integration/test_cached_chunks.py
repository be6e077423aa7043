"""Phases cl and joint with cl.embed_chunk_size end to end: the same loss curve as one pass (a model without
dropout), through the config, the batches' source ids and the engine."""

from __future__ import annotations

import pytest

from helpers import read_scalars, tiny_run

pytestmark = pytest.mark.integration


def _curve(model, train, run_dir, phase: str, chunk: str) -> list[tuple[int, float]]:
    from dcl_dist.config import load_config
    from dcl_dist.pipeline import run_variant

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
    return read_scalars(run_dir / "tb" / phase, f"{phase}/loss")


@pytest.mark.parametrize("phase", ["cl", pytest.param("joint", marks=pytest.mark.slow)])
def test_cached_chunks_give_the_same_loss_curve(phase, tiny_model_nodrop, snips_small, tmp_path):
    plain = _curve(tiny_model_nodrop, snips_small, tmp_path / "plain", phase, "null")
    cached = _curve(tiny_model_nodrop, snips_small, tmp_path / "cached", phase, "3")
    assert [s for s, _ in plain] == [1, 2, 3]
    assert [s for s, _ in cached] == [1, 2, 3]
    for (_, a), (_, b) in zip(plain, cached):
        assert b == pytest.approx(a, rel=1e-5), (plain, cached)
