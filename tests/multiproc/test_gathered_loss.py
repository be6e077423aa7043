"""The all-gathered in-batch losses: on 2 and 3 gloo ranks, after DeepSpeed's data-parallel averaging, the
loss and every parameter's gradient equal one process computing the loss on the concatenated global batch."""

from __future__ import annotations

import copy

import pytest
import torch

from dcl_dist.config import load_config
from multiproc.spawn import run_ranks

pytestmark = pytest.mark.multiproc

MICRO = 4
TOLERANCE = 1e-6


def _batch(world: int, tokenizer):
    """The global batch: rank r's rows are [r * MICRO, (r + 1) * MICRO); class layouts differ by rank."""
    texts, labels = [], []
    for r in range(world):
        for i in range(MICRO):
            texts.append(f"sample {r} {i} " + " ".join(["word"] * (1 + (3 * r + i) % 5)))
            labels.append([r % 2, 2 * r][i % 2] if r < 2 else i % 3)  # rank 0: {0}, rank 1: {1, 2}, rank 2: 0..2
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor(labels)[:, None]


def _gradients(model_dir: str, loss_name: str, run_dir: str):
    from transformers import AutoTokenizer

    from dcl_dist import dist, engine
    from dcl_dist.losses.pair_cosine import InBatchCosineLoss, all_pairs_cosine_mse, level_weights
    from dcl_dist.losses.supcon import SupConLoss, supcon
    from dcl_dist.models.encoder import SentenceEncoder, load_backbone

    rank, world = dist.rank(), dist.world_size()
    torch.manual_seed(0)
    model = SentenceEncoder(load_backbone(model_dir, "eager"), "mean", n_dense=1)
    reference = copy.deepcopy(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids, mask, levels = _batch(world, tokenizer)
    rows = slice(rank * MICRO, (rank + 1) * MICRO)

    weights = level_weights(1, None)
    loss_fn = InBatchCosineLoss(weights) if loss_name == "cosine_mse" else SupConLoss(0.2)
    cfg = load_config(
        None,
        [
            f"run.dir={run_dir}",
            f"data.train={__file__}",
            "deepspeed.zero_stage=0",
            f"cl.micro_batch_size_per_rank={MICRO}",
            "cl.max_grad_norm=0",
        ],
    )
    model_engine = engine.initialize(model, cfg, "cl", total_steps=10, hidden_size=model.hidden_size)
    loss = loss_fn(model_engine(ids[rows], mask[rows]), levels[rows])
    model_engine.backward(loss)
    grads = {n: p.grad.detach().clone() for n, p in model_engine.module.named_parameters() if p.grad is not None}

    # the reference: one process, the whole global batch, no gathering
    z = reference(ids, mask)
    ref_loss = all_pairs_cosine_mse(z, levels, weights) if loss_name == "cosine_mse" else supcon(z, levels[:, 0], 0.2)
    ref_loss.backward()
    ref = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    return {
        "loss": (loss.item(), ref_loss.item()),
        "names": sorted(grads) == sorted(ref),
        "max_diff": max((grads[n] - ref[n]).abs().max().item() for n in ref),
        "max_grad": max(g.abs().max().item() for g in ref.values()),
    }


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("loss_name", ["cosine_mse", "supcon"])
def test_gathered_loss_equals_one_process(world, loss_name, tmp_path, tiny_model_nodrop):
    results = run_ranks(_gradients, world, tmp_path, str(tiny_model_nodrop), loss_name, str(tmp_path / "run"))
    for r in results:
        assert r["names"]
        assert r["loss"][0] == pytest.approx(r["loss"][1], abs=TOLERANCE)
        assert r["max_grad"] > 1e-4  # the gradients are not trivially zero
        assert r["max_diff"] <= TOLERANCE, r
