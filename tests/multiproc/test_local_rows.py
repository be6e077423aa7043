"""The in-batch losses in local-rows form, plain and with cached chunks, through phase cl's model and a DeepSpeed
engine: on 1, 2 and 3 gloo ranks with uneven per-rank sizes, ZeRO 0, 2 and 3, every parameter's gradient equals
one process computing the loss on the concatenated global batch (with the same same-source exclusion).

The relative difference of a parameter: max |g - g_ref| / max |g_ref| (ZERO_GRADIENT says how the parameters whose
gradient is zero in exact arithmetic are held). Measured (fp32, CPU): at most 6.5e-6 to one fp64 process and 9.6e-6
to one fp32 process (which rounds on its own: SupCon at T = 0.2); the target, 1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch

from multiproc.spawn import run_ranks

pytestmark = pytest.mark.multiproc

SIZES = (5, 3, 4)
"""Rows of ranks 0, 1, 2: uneven."""
LABELS = [0, 1, 0, 2, 1, 0, 1, 1, 2, 0, 2, 1]
SOURCES = [0, 1, 2, 0, 3, 4, 5, 1, 6, 7, 8, 4]
"""Sources 0 (rows 0, 3), 1 (rows 1, 7: ranks 0 and 1) and 4 (rows 5, 11: ranks 1 and 2) each have a copy."""
CHUNKS = (None, 2)
"""Embedding in one pass, and cached in chunks of 2 rows (the 5 rows of rank 0 make 3 chunks on every rank)."""
RELATIVE_TOLERANCE = 1e-5
ZERO_GRADIENT = 1e-6
"""A parameter whose reference gradient is below this x the model's largest is zero but for rounding (the attention
keys' biases: softmax ignores a constant shift); its difference is held to this x the largest gradient instead."""


def _rows(world: int) -> slice:
    from dcl_dist import dist

    start = sum(SIZES[: dist.rank()])
    return slice(start, start + SIZES[dist.rank()])


def _global_batch(tokenizer, world: int) -> dict:
    n = sum(SIZES[:world])
    texts = [f"sample {i} " + " ".join(["word"] * (1 + (3 * i) % 5)) for i in range(n)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "levels": torch.tensor(LABELS[:n])[:, None],
        "sources": torch.tensor(SOURCES[:n]),
    }


def _full_gradients(model_engine) -> dict[str, torch.Tensor]:
    """Every trainable parameter's whole gradient after backward, whatever the ZeRO stage (every rank calls it)."""
    from deepspeed.utils import safe_get_full_grad

    return {
        name: safe_get_full_grad(p).detach().clone().reshape(p.ds_shape if hasattr(p, "ds_shape") else p.shape)
        for name, p in model_engine.module.encoder.named_parameters()
        if p.requires_grad
    }


def _differences(grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """max over parameters of max |g - g_ref| / max |g_ref|; for the parameters whose gradient is zero but for
    rounding, max |g - g_ref| / the model's largest gradient instead."""
    largest = max(g.abs().max().item() for g in ref.values())
    worst, zero_worst = 0.0, 0.0
    for name, g in ref.items():
        scale, diff = g.abs().max().item(), (grads[name].double() - g).abs().max().item()
        if scale > ZERO_GRADIENT * largest:
            worst = max(worst, diff / scale)
        else:
            zero_worst = max(zero_worst, diff / largest)
    return {"relative": worst, "zero_gradients": zero_worst, "largest": largest}


def _relative_differences(model_dir: str, run_dir: str, cases: list[tuple[int, str, int | None, bool]]) -> list:
    """For each (ZeRO stage, loss, chunk size, lora): the loss and its reference, and the gradients' differences to
    one process in fp32 and in fp64."""
    from transformers import AutoTokenizer

    from dcl_dist import dist, engine
    from dcl_dist.config import load_config
    from dcl_dist.losses.pair_cosine import InBatchCosineLoss, all_pairs_cosine_mse, level_weights
    from dcl_dist.losses.supcon import SupConLoss, supcon
    from dcl_dist.models import lora
    from dcl_dist.models.encoder import SentenceEncoder, load_backbone
    from dcl_dist.phases.contrastive import ContrastiveModel

    world = dist.world_size()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = _global_batch(tokenizer, world)
    mine = {k: v[_rows(world)] for k, v in batch.items()}
    weights = level_weights(1, None)
    out = []
    for stage, loss_name, chunk_size, with_lora in cases:
        cfg = load_config(
            None,
            [
                f"run.dir={run_dir}",
                f"data.train={__file__}",
                f"deepspeed.zero_stage={stage}",
                "cl.micro_batch_size_per_rank=4",
                "cl.max_grad_norm=0",
                "lora.dropout=0.0",
            ],
        )
        torch.manual_seed(0)
        encoder = SentenceEncoder(load_backbone(model_dir, "eager"), "mean", n_dense=1)
        if with_lora:
            lora.add_adapter(encoder.backbone, cfg.lora)
            for p in encoder.backbone.parameters():  # B = 0 would leave A without a gradient
                if p.requires_grad:
                    torch.nn.init.normal_(p, std=0.1)
        reference = copy.deepcopy(encoder)
        loss = InBatchCosineLoss(weights) if loss_name == "cosine_mse" else SupConLoss(0.2)
        model = ContrastiveModel(encoder, loss, chunk_size)
        model_engine = engine.initialize(model, cfg, "cl", total_steps=10, hidden_size=encoder.hidden_size)
        value = model_engine(mine)
        model_engine.backward(value)
        grads = _full_gradients(model_engine)

        reference_values, references = [], []
        for dtype in (torch.float32, torch.float64):
            model_copy = copy.deepcopy(reference).to(dtype)
            z = model_copy(batch["input_ids"], batch["attention_mask"])
            if loss_name == "cosine_mse":
                ref_value = all_pairs_cosine_mse(z, batch["levels"], weights.to(dtype), batch["sources"])
            else:
                ref_value = supcon(z, batch["levels"][:, 0], 0.2, batch["sources"])
            ref_value.backward()
            reference_values.append(ref_value.item())
            references.append({n: p.grad.double() for n, p in model_copy.named_parameters() if p.requires_grad})
        out.append(
            {
                "case": (stage, loss_name, chunk_size, with_lora),
                "loss": (value.item(), reference_values[0]),
                "names": sorted(grads) == sorted(references[0]),
                "fp32": _differences(grads, references[0]),
                "fp64": _differences(grads, references[1]),
                "fp32_reference_to_fp64": _differences(references[0], references[1]),
            }
        )
    return out


def _cases(stages: tuple[int, ...], zero3_extras: bool = False) -> list[tuple[int, str, int | None, bool]]:
    """Both losses, plain and cached, at each stage; zero3_extras adds, at ZeRO-3, LoRA (cached) and chunks of one
    row (rank 1's 3 rows make 5 chunks, two of them stand-ins, as many as rank 0's)."""
    cases = [(stage, loss, chunk, False) for stage in stages for loss in LOSSES for chunk in CHUNKS]
    extras = [(3, loss, 2, True) for loss in LOSSES] + [(3, "supcon", 1, False)]
    return cases + (extras if zero3_extras else [])


LOSSES = ("cosine_mse", "supcon")


def _check(results: list) -> dict[int, tuple[float, float]]:
    """ZeRO stage -> (the largest relative difference to one fp32 process, to one fp64 process) over its cases."""
    worst: dict[int, tuple[float, float]] = {}
    for rank_results in results:
        for r in rank_results:
            assert r["names"], r
            assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-6), r
            assert r["fp64"]["largest"] > 1e-4, r  # the gradients are not trivially zero
            assert r["fp64"]["relative"] <= RELATIVE_TOLERANCE, r
            assert r["fp64"]["zero_gradients"] <= ZERO_GRADIENT, r
            # one fp32 process carries rounding of its own (SupCon at T = 0.2: 5e-6 here)
            own = r["fp32_reference_to_fp64"]["relative"]
            assert r["fp32"]["relative"] <= RELATIVE_TOLERANCE + own, r
            stage = r["case"][0]
            old = worst.get(stage, (0.0, 0.0))
            worst[stage] = (max(old[0], r["fp32"]["relative"]), max(old[1], r["fp64"]["relative"]))
    return worst


def _report(world: int, worst: dict[int, tuple[float, float]]) -> None:
    for stage, (fp32, fp64) in sorted(worst.items()):
        print(
            f"{world} ranks, ZeRO {stage}: max relative difference {fp32:.2e} to one fp32 process, {fp64:.2e} to fp64"
        )


def test_one_rank(tmp_path, tiny_model_nodrop):
    results = run_ranks(_relative_differences, 1, tmp_path, str(tiny_model_nodrop), str(tmp_path / "run"), _cases((0,)))
    _report(1, _check(results))


def test_three_ranks_zero2(tmp_path, tiny_model_nodrop):
    cases = _cases((2,))
    _report(
        3, _check(run_ranks(_relative_differences, 3, tmp_path, str(tiny_model_nodrop), str(tmp_path / "run"), cases))
    )


@pytest.mark.slow
@pytest.mark.parametrize("world, stages", [(2, (0, 2, 3)), (3, (0, 3))])
def test_every_stage_and_lora(world, stages, tmp_path, tiny_model_nodrop):
    """ZeRO-3 gathers parameters again while each chunk is recomputed; LoRA's frozen base weights stay frozen."""
    cases = _cases(stages, zero3_extras=True)
    _report(
        world,
        _check(run_ranks(_relative_differences, world, tmp_path, str(tiny_model_nodrop), str(tmp_path / "run"), cases)),
    )
