"""Phase 3, ft: train the classifier (encoder + two-layer MLP head) with early stopping on validation;
the test split is evaluated once, at the end, with the best validation weights.

Artifact: encoder + head + label names.
"""

from __future__ import annotations

import logging

from dcl_dist import dist, loop
from dcl_dist import engine as ds
from dcl_dist.data.batching import FtCollate, TextSource, Tokenize
from dcl_dist.evaluation import classifier_metrics
from dcl_dist.losses.classification import ClassificationLoss
from dcl_dist.models.head import Classifier, ClassifierHead
from dcl_dist.phases.common import (
    PhaseContext,
    batch_plan,
    embedding_report,
    epoch_loader,
    eval_batch_size,
    load_start,
    report_trainable,
    resolve_max_length,
    save_artifact,
    seed_everything,
    shuffled_order,
    stream_feed,
    truncation_note,
)

log = logging.getLogger(__name__)


def run(ctx: PhaseContext) -> dict:
    cfg, phase = ctx.cfg, "ft"
    seed_everything(cfg.run.seed)
    encoder, tokenizer = load_start(ctx, phase)
    classes = ctx.splits.classes
    head = ClassifierHead(encoder.hidden_size, cfg.ft.head_hidden, len(classes), cfg.ft.dropout, cfg.ft.activation)
    model = Classifier(encoder, head)
    if cfg.ft.freeze_encoder:
        encoder.requires_grad_(False)
    report_trainable(model, phase)
    tokenize = Tokenize(tokenizer, resolve_max_length(cfg, tokenizer, encoder.backbone))

    train, validation, test = ctx.splits.train, ctx.splits.validation, ctx.splits.test
    if ctx.splits.stream is not None:
        feed = stream_feed(ctx, phase, tokenize)
        steps_per_epoch, batches = feed.steps_per_epoch, feed.batches
    else:
        source = TextSource(train.texts, train.levels, train.ids)
        plan = batch_plan(cfg, phase)
        steps_per_epoch = plan.steps(len(train))
        lengths = tokenize.lengths(train.texts) if cfg.data.group_by_length else []

        def batches(epoch: int, start: int, data_state=None):
            order = shuffled_order(cfg, plan, len(train), lengths, epoch)
            return epoch_loader(cfg, plan, order, start, steps_per_epoch, FtCollate(tokenize, source))

    engine = ds.initialize(model, cfg, phase, loop.total_steps(cfg.ft, steps_per_epoch), encoder.hidden_size)
    loss_fn = ClassificationLoss()
    eval_batch = eval_batch_size(cfg, phase)

    def step_loss(eng, batch):
        return loss_fn(eng(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def evaluate() -> dict[str, float]:
        m = classifier_metrics(engine.module, tokenize, validation.texts, validation.labels, classes, eval_batch)
        return {k: v for k, v in m.items() if k != "n"}

    phase_dir = ctx.phase_dir(phase)
    state = loop.train(
        loop.PhaseRun(
            phase, engine, steps_per_epoch, batches, step_loss, evaluate, cfg.ft.select_metric, cfg.ft.patience
        ),
        cfg,
        phase_dir,
    )
    loop.load_best(engine, phase_dir)
    engine.eval()
    metrics = {
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "best_step": state.best_step,
        "select_metric": cfg.ft.select_metric,
        "history": state.history,
        "validation": classifier_metrics(
            engine.module, tokenize, validation.texts, validation.labels, classes, eval_batch, full=True
        ),
    }
    if test is not None:
        # the one and only look at the test split
        metrics["test"] = classifier_metrics(
            engine.module, tokenize, test.texts, test.labels, classes, eval_batch, full=True
        )
    truncation_note(tokenize, phase)
    metrics["embedding"] = embedding_report(ctx, phase, engine.module.encoder, tokenize, state.step)
    if dist.is_main():
        v = metrics["validation"]
        log.info(
            "ft: best validation %s %.4f at step %s", cfg.ft.select_metric, v[cfg.ft.select_metric], state.best_step
        )
    save_artifact(
        ctx,
        phase,
        engine,
        engine.module.encoder,
        tokenizer,
        tokenize.max_length,
        {"metrics": metrics},
        head=engine.module.head,
    )
    return metrics
