"""Cached chunks cost no extra gradient reduction: on 2 gloo ranks, one optimiser step of phase cl's model, with
and without cl.embed_chunk_size, counted collective by collective (dist.counting_collectives) in its forward,
backward and step.

With caching, ZeRO 0 and 2 reduce gradients exactly as often and as much as without (one reduction per step, not
one per chunk); the forward adds one all_gather of an int (the chunk count every rank agrees on). ZeRO-3 gathers
each parameter again when a chunk is recomputed, in backward: more all_gathers, the same reduce-scatters.
"""

from __future__ import annotations

import pytest
import torch

from multiproc.spawn import run_ranks

pytestmark = pytest.mark.multiproc

MICRO = 6
CHUNK = 2
"""6 rows per rank in chunks of 2: three chunks."""


def _counts(model_dir: str, run_dir: str, cases: list[tuple[int, str, int | None]]) -> list[dict]:
    from transformers import AutoTokenizer

    from dcl_dist import dist, engine
    from dcl_dist.config import load_config
    from dcl_dist.losses.pair_cosine import InBatchCosineLoss, level_weights
    from dcl_dist.losses.supcon import SupConLoss
    from dcl_dist.models.encoder import SentenceEncoder, load_backbone
    from dcl_dist.phases.contrastive import ContrastiveModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [f"sample {dist.rank()} {i} " + " ".join(["word"] * (1 + i % 4)) for i in range(MICRO)]
    batch = {
        **tokenizer(texts, padding=True, return_tensors="pt"),
        "levels": torch.tensor([i % 3 for i in range(MICRO)])[:, None],
        "sources": torch.arange(MICRO) + MICRO * dist.rank(),
    }
    out = []
    for stage, loss_name, chunk_size in cases:
        overrides = [f"run.dir={run_dir}", f"data.train={__file__}", f"deepspeed.zero_stage={stage}"]
        cfg = load_config(None, [*overrides, f"cl.micro_batch_size_per_rank={MICRO}", "cl.max_grad_norm=0"])
        torch.manual_seed(0)
        encoder = SentenceEncoder(load_backbone(model_dir, "eager"), "mean", n_dense=1)
        loss = InBatchCosineLoss(level_weights(1, None)) if loss_name == "cosine_mse" else SupConLoss(0.2)
        model_engine = engine.initialize(
            ContrastiveModel(encoder, loss, chunk_size), cfg, "cl", total_steps=10, hidden_size=encoder.hidden_size
        )
        counted = {}
        with dist.counting_collectives() as counts:
            value = model_engine(batch)
        counted["forward"] = counts
        with dist.counting_collectives() as counts:
            model_engine.backward(value)
        counted["backward"] = counts
        with dist.counting_collectives() as counts:
            model_engine.step()
        counted["step"] = counts
        parameters = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in encoder.parameters())
        out.append(
            {
                "case": (stage, loss_name, chunk_size),
                "parameters": parameters,
                **{part: (dict(c.calls), dict(c.bytes)) for part, c in counted.items()},
            }
        )
    return out


def _total(result: dict, part: str, names: tuple[str, ...]) -> tuple[int, int]:
    calls, sent = result[part]
    return sum(calls.get(n, 0) for n in names), sum(sent.get(n, 0) for n in names)


def _describe(result: dict) -> str:
    parts = []
    for part in ("forward", "backward", "step"):
        calls, sent = result[part]
        parts.append(part + ": " + (", ".join(f"{n} {calls[n]}x {sent[n]:,} B" for n in sorted(calls)) or "none"))
    return f"ZeRO {result['case'][0]} {result['case'][1]} chunk {result['case'][2]}: " + "; ".join(parts)


REDUCTIONS = ("all_reduce", "reduce_scatter", "reduce_scatter_tensor", "reduce")


def test_one_reduction_per_step(tmp_path, tiny_model_nodrop):
    cases = [(stage, loss, chunk) for stage in (2, 3) for loss in ("cosine_mse", "supcon") for chunk in (None, CHUNK)]
    results = run_ranks(_counts, 2, tmp_path, str(tiny_model_nodrop), str(tmp_path / "run"), cases)[0]
    for r in results:
        print(_describe(r))
    by_case = {r["case"]: r for r in results}
    for stage in (2, 3):
        for loss in ("cosine_mse", "supcon"):
            plain, cached = by_case[(stage, loss, None)], by_case[(stage, loss, CHUNK)]
            # the gradient reductions and the optimiser step: the same with and without caching
            assert _total(cached, "backward", REDUCTIONS) == _total(plain, "backward", REDUCTIONS), (plain, cached)
            assert cached["step"] == plain["step"]
            # the reductions of backward move each gradient about once (buckets may pad), not once per chunk
            _, reduced = _total(cached, "backward", REDUCTIONS)
            assert reduced < 2 * 4 * cached["parameters"]
            if stage == 2:  # the forward: one all_gather of an int more (the agreed chunk count)
                assert cached["forward"][0].get("all_gather", 0) == plain["forward"][0].get("all_gather", 0) + 1
                assert cached["backward"] == plain["backward"]
            else:  # ZeRO-3 gathers the parameters once more in backward, to recompute the chunks
                assert _total(cached, "backward", ("all_gather_into_tensor", "all_gather")) > _total(
                    plain, "backward", ("all_gather_into_tensor", "all_gather")
                )
