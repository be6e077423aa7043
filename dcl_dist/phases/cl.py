"""Phase 2, cl: cluster the representation by class with the paper's cosine-MSE loss (or SupCon),
on the imbalance-corrected training set, in pair mode or gathered in-batch mode.

Artifact: the starting encoder + one more Dense layer ("DAECL" after phase dae).
"""

from __future__ import annotations

import logging

from dcl_dist import dist, loop
from dcl_dist.data.batching import Tokenize
from dcl_dist.phases.context import PhaseContext
from dcl_dist.phases.contrastive import ContrastiveModel, contrastive_evaluator, contrastive_loss
from dcl_dist.phases.feed import contrastive_feed
from dcl_dist.phases.outputs import finish, record_base
from dcl_dist.phases.start import load_start, report_trainable, resolve_max_length, seed_everything, start_engine

log = logging.getLogger(__name__)


def run(ctx: PhaseContext) -> dict:
    cfg, phase = ctx.cfg, "cl"
    seed_everything(cfg.run.seed)
    encoder, tokenizer = load_start(ctx, phase)
    encoder.add_dense()
    report_trainable(encoder, phase)
    tokenize = Tokenize(tokenizer, resolve_max_length(cfg, tokenizer, encoder.backbone))
    feed, correction = contrastive_feed(ctx, phase, tokenize)
    if dist.is_main():
        log.info(
            "cl: imbalance %s: class sizes %s -> %s",
            cfg.cl.imbalance,
            correction["counts"],
            correction["corrected_counts"],
        )
    n_levels = len(ctx.splits.label_names)
    model = ContrastiveModel(encoder, contrastive_loss(cfg, n_levels), cfg.cl.embed_chunk_size)
    model_engine = start_engine(ctx, phase, model, encoder.hidden_size, feed.steps_per_epoch)
    record_base(ctx, phase, model_engine.module.encoder, tokenize)

    evaluate = contrastive_evaluator(ctx, phase, model_engine.module.encoder, tokenize, n_levels)
    state = loop.train(
        loop.PhaseRun(phase, model_engine, feed, lambda model_engine, batch: model_engine(batch), evaluate),
        cfg,
        ctx.phase_dir(phase),
        ctx.resume,
    )
    metrics = {"steps": state.step, "history": state.history, "imbalance_correction": correction}
    return finish(ctx, phase, model_engine, model_engine.module.encoder, tokenizer, tokenize, state, metrics)
