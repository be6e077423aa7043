"""Phase 2, cl: cluster the representation by class with the paper's cosine-MSE loss (or SupCon),
on the imbalance-corrected training set, in pair mode or gathered in-batch mode.

Artifact: the starting encoder + one more Dense layer ("DAECL" after phase dae).
"""

from __future__ import annotations

import logging

from dcl_dist import dist, loop
from dcl_dist import engine as ds
from dcl_dist.data.batching import Tokenize
from dcl_dist.phases.common import (
    PhaseContext,
    contrastive_batches,
    contrastive_evaluator,
    contrastive_loss,
    embedding_report,
    load_start,
    report_trainable,
    resolve_max_length,
    save_artifact,
    seed_everything,
    truncation_note,
)

log = logging.getLogger(__name__)


def run(ctx: PhaseContext) -> dict:
    cfg, phase = ctx.cfg, "cl"
    seed_everything(cfg.run.seed)
    encoder, tokenizer = load_start(ctx, phase)
    encoder.add_dense()
    report_trainable(encoder, phase)
    tokenize = Tokenize(tokenizer, resolve_max_length(cfg, tokenizer, encoder.backbone))

    steps_per_epoch, batches, record = contrastive_batches(ctx, phase, tokenize)
    if dist.is_main():
        log.info(
            "cl: imbalance %s: class sizes %s -> %s", cfg.cl.imbalance, record["counts"], record["corrected_counts"]
        )
    n_levels = len(ctx.splits.label_names)
    loss_fn = contrastive_loss(cfg, n_levels)
    engine = ds.initialize(encoder, cfg, phase, loop.total_steps(cfg.cl, steps_per_epoch), encoder.hidden_size)

    def step_loss(eng, batch):
        return loss_fn(eng(batch["input_ids"], batch["attention_mask"]), batch["levels"])

    evaluate = contrastive_evaluator(cfg, phase, lambda: engine.module, tokenize, ctx.splits.validation, n_levels)
    state = loop.train(
        loop.PhaseRun(phase, engine, steps_per_epoch, batches, step_loss, evaluate),
        cfg,
        ctx.phase_dir(phase),
    )
    truncation_note(tokenize, phase)
    embedding = embedding_report(ctx, phase, engine.module, tokenize, state.step)
    metrics = {"steps": state.step, "embedding": embedding, "history": state.history, "imbalance_correction": record}
    save_artifact(ctx, phase, engine, engine.module, tokenizer, tokenize.max_length, {"metrics": metrics})
    return metrics
