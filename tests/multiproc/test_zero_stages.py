"""ZeRO stages 0, 2 and 3 on 2 gloo ranks train the tied TSDAE decoder identically, and keep ranks in sync."""

from __future__ import annotations

import pytest
import torch

from helpers import read_scalars, tiny_run
from multiproc.spawn import run_ranks

pytestmark = pytest.mark.multiproc

STEPS = 5
RELATIVE_TOLERANCE = 1e-4
"""fp32 on CPU; the stages sum gradients in different orders (buckets, partitions), so not bit for bit."""


def _train_dae(model_dir: str, train: str, run_dir: str, stage: int) -> None:
    from dcl_dist.config import load_config
    from dcl_dist.pipeline import run_variant

    cfg = load_config(
        None,
        tiny_run(
            model_dir,
            train,
            run_dir,
            f"deepspeed.zero_stage={stage}",
            f"dae.max_steps={STEPS}",
            "dae.micro_batch_size_per_rank=4",
            "dae.log_every_steps=1",
            "dae.lr=1e-3",
        ),
    )
    run_variant(cfg, only_phase="dae")


@pytest.fixture(scope="module")
def curves(tmp_path_factory, tiny_model_nodrop, snips_small):
    out = {}
    for stage in (0, 2, 3):
        tmp = tmp_path_factory.mktemp(f"zero{stage}")
        run_ranks(_train_dae, 2, tmp, str(tiny_model_nodrop), str(snips_small), str(tmp / "run"), stage)
        out[stage] = read_scalars(tmp / "run" / "tb" / "dae", "dae/loss")
    return out


@pytest.mark.slow
def test_zero_stages_give_the_same_loss_curve(curves):
    reference = curves[0]
    assert [s for s, _ in reference] == list(range(1, STEPS + 1))
    assert reference[0][1] > reference[-1][1]  # it learns
    for stage in (2, 3):
        assert [s for s, _ in curves[stage]] == [s for s, _ in reference]
        for (_, a), (_, b) in zip(reference, curves[stage]):
            assert b == pytest.approx(a, rel=RELATIVE_TOLERANCE), (stage, reference, curves[stage])


def _weights_in_sync(model_dir: str, run_dir: str, stage: int, precision: str = "fp32") -> bool:
    """Train the tied DAE 3 steps on different data per rank; every rank must hold the same weights."""
    from transformers import AutoTokenizer

    from dcl_dist import dist, engine
    from dcl_dist.config import load_config
    from dcl_dist.data.batching import DaeCollate, Noise, TextSource, Tokenize
    from dcl_dist.phases.context import PhaseContext
    from dcl_dist.phases.dae import build_model

    cfg = load_config(
        None,
        [
            f"run.dir={run_dir}",
            f"model.name_or_path={model_dir}",
            f"data.train={__file__}",
            f"deepspeed.zero_stage={stage}",
            f"deepspeed.precision={precision}",  # bf16: autocast over fp32 weights (deepspeed.mixed_precision)
            "dae.micro_batch_size_per_rank=3",
            "dae.lr=1e-2",
        ],
    )
    torch.manual_seed(0)
    model, tokenizer = build_model(PhaseContext(cfg, None, None, model_dir))
    model_engine = engine.initialize(model, cfg, "dae", total_steps=10, hidden_size=model.encoder.hidden_size)
    texts = [f"rank {dist.rank()} sentence number {i} with some words" for i in range(9)]
    collate = DaeCollate(
        Tokenize(AutoTokenizer.from_pretrained(model_dir), 24),
        TextSource(texts, None, list(range(9))),
        Noise(0, 0.3),
        epoch=0,
    )
    for step in range(3):
        batch = collate([3 * step, 3 * step + 1, 3 * step + 2])
        model_engine.backward(model_engine(**batch))
        model_engine.step()
    weights = {n: p.detach().clone() for n, p in model_engine.module.named_parameters()}
    return dist.same_on_all_ranks({n: w.numpy().tobytes() for n, w in weights.items()})


@pytest.mark.parametrize("stage, precision", [(0, "fp32"), (2, "fp32"), (2, "bf16")])
def test_ranks_keep_identical_weights(stage, precision, tmp_path, tiny_model):
    run = str(tmp_path / "run")
    assert run_ranks(_weights_in_sync, 2, tmp_path, str(tiny_model), run, stage, precision) == [True, True]
