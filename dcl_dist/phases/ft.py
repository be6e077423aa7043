"""Phase 3, ft: train the classifier (encoder + two-layer MLP head) with early stopping on validation;
the test split is evaluated once, at the end, with the best validation weights.

Artifact: encoder + head + class names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dcl_dist import dist, loop
from dcl_dist.data.batching import Tokenize
from dcl_dist.evaluation import classifier_metrics
from dcl_dist.losses.classification import ClassificationLoss
from dcl_dist.models.head import Classifier, ClassifierHead
from dcl_dist.phases.context import PhaseContext
from dcl_dist.phases.feed import ft_feed
from dcl_dist.phases.outputs import finish, record_base
from dcl_dist.phases.start import load_start, report_trainable, resolve_max_length, seed_everything, start_engine

log = logging.getLogger(__name__)


def build_model(ctx: PhaseContext) -> tuple[Classifier, object]:
    """The encoder this phase starts from and a new classification head (the encoder frozen if ft.freeze_encoder)."""
    cfg = ctx.cfg
    encoder, tokenizer = load_start(ctx, "ft")
    n_classes = len(ctx.splits.class_names)
    head = ClassifierHead(encoder.hidden_size, cfg.ft.head_hidden, n_classes, cfg.ft.dropout, cfg.ft.activation)
    model = Classifier(encoder, head)
    if cfg.ft.freeze_encoder:
        encoder.requires_grad_(False)
    return model, tokenizer


def run(ctx: PhaseContext) -> dict:
    cfg, phase = ctx.cfg, "ft"
    seed_everything(cfg.run.seed)
    model, tokenizer = build_model(ctx)
    report_trainable(model, phase)
    tokenize = Tokenize(tokenizer, resolve_max_length(cfg, tokenizer, model.encoder.backbone))
    feed = ft_feed(ctx, tokenize)
    model_engine = start_engine(ctx, phase, model, model.encoder.hidden_size, feed.steps_per_epoch)
    record_base(ctx, phase, model_engine.module.encoder, tokenize)
    loss_fn = ClassificationLoss()

    def step_loss(model_engine, batch):
        return loss_fn(model_engine(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    evaluate = validation_metrics(ctx, model_engine.module, tokenize)
    phase_dir = ctx.phase_dir(phase)
    state = loop.train(
        loop.PhaseRun(phase, model_engine, feed, step_loss, evaluate, cfg.ft.select_metric, cfg.ft.patience),
        cfg,
        phase_dir,
        ctx.resume,
    )
    loop.load_best(model_engine, phase_dir)
    model_engine.eval()
    metrics = {
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "best_step": state.best_step,
        "select_metric": cfg.ft.select_metric,
        "history": state.history,
        **final_metrics(ctx, model_engine.module, tokenize),
    }
    if dist.is_main():
        best = metrics["validation"][cfg.ft.select_metric]
        log.info("ft: best validation %s %.4f at step %s", cfg.ft.select_metric, best, state.best_step)
    encoder, head = model_engine.module.encoder, model_engine.module.head
    return finish(ctx, phase, model_engine, encoder, tokenizer, tokenize, state, metrics, head)


def validation_metrics(ctx: PhaseContext, classifier: Classifier, tokenize: Tokenize) -> Callable[[], dict]:
    """What the loop evaluates: accuracy and macro P/R/F1 on validation."""
    validation, class_names = ctx.splits.validation, ctx.splits.class_names

    def evaluate() -> dict[str, float]:
        m = classifier_metrics(
            classifier, tokenize, validation.texts, validation.labels, class_names, ctx.eval_batch_size("ft")
        )
        return {k: v for k, v in m.items() if k != "n"}

    return evaluate


def final_metrics(ctx: PhaseContext, classifier: Classifier, tokenize: Tokenize) -> dict:
    """The full report (per class, confusion matrix) on validation, and on test: the one and only look at it."""
    splits, batch_size = ctx.splits, ctx.eval_batch_size("ft")
    out = {}
    for name, split in (("validation", splits.validation), ("test", splits.test)):
        if split is not None:
            out[name] = classifier_metrics(
                classifier, tokenize, split.texts, split.labels, splits.class_names, batch_size, full=True
            )
    return out
