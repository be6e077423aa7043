"""Phase 1, dae: adapt the encoder to the data with a TSDAE denoising autoencoder (no labels).

Artifact: encoder + pooling + bottleneck Dense.
"""

from __future__ import annotations

import torch
from torch import nn

from dcl_dist import engine as ds
from dcl_dist import loop
from dcl_dist.data.batching import DaeCollate, Noise, TextSource, Tokenize, dae_targets
from dcl_dist.data.splits import load_unlabelled
from dcl_dist.evaluation import sharded_apply
from dcl_dist.losses.reconstruction import ReconstructionLoss
from dcl_dist.models.decoder import TsdaeDecoder, freeze_body, load_decoder, tie_to_encoder
from dcl_dist.models.encoder import SentenceEncoder
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
    uses_lora,
)

UNLABELLED_ID_OFFSET = 1 << 40
"""Sample ids of data.unlabelled texts start here, apart from train's (noise keys must not collide)."""

VALIDATION_EPOCH = -1
"""Noise key of the validation loss: the same corruption at every evaluation."""


class DaeModel(nn.Module):
    """Noisy text -> sentence vector -> decoder -> reconstruction loss of the clean text."""

    def __init__(self, encoder: SentenceEncoder, decoder: TsdaeDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.loss = ReconstructionLoss()

    def forward(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, decoder_labels):
        sentence = self.encoder(input_ids, attention_mask)
        token_losses = self.decoder(sentence, decoder_input_ids, decoder_attention_mask, decoder_labels)
        return self.loss(token_losses, decoder_labels)


def build_model(ctx: PhaseContext) -> tuple[DaeModel, object]:
    """The encoder this phase starts from, plus the bottleneck, plus the (tied) decoder."""
    cfg = ctx.cfg
    encoder, tokenizer = load_start(ctx, "dae")
    if cfg.model.bottleneck:
        encoder.add_dense()
    decoder = load_decoder(cfg.model.name_or_path, cfg.model.attn_implementation)
    if uses_lora(cfg, "dae"):
        freeze_body(decoder)
    if cfg.dae.tie_decoder:
        tie_to_encoder(decoder, encoder.backbone)
    return DaeModel(encoder, TsdaeDecoder(decoder)), tokenizer


def run(ctx: PhaseContext) -> dict:
    cfg, phase = ctx.cfg, "dae"
    seed_everything(cfg.run.seed)
    model, tokenizer = build_model(ctx)
    report_trainable(model, phase)
    tokenize = Tokenize(tokenizer, resolve_max_length(cfg, tokenizer, model.encoder.backbone))

    noise = Noise(cfg.run.seed, cfg.dae.deletion_ratio)
    if ctx.splits.stream is not None:
        feed = stream_feed(ctx, phase, tokenize)
        steps_per_epoch, batches = feed.steps_per_epoch, feed.batches
    else:
        train = ctx.splits.train
        extra = load_unlabelled(cfg)
        ids = train.ids + [UNLABELLED_ID_OFFSET + i for i in range(len(extra))]
        source = TextSource(train.texts + extra, None, ids)
        plan = batch_plan(cfg, phase)
        steps_per_epoch = plan.steps(len(source.texts))
        lengths = tokenize.lengths(source.texts) if cfg.data.group_by_length else []

        def batches(epoch: int, start: int, data_state=None):
            order = shuffled_order(cfg, plan, len(source.texts), lengths, epoch)
            return epoch_loader(cfg, plan, order, start, steps_per_epoch, DaeCollate(tokenize, source, noise, epoch))

    engine = ds.initialize(model, cfg, phase, loop.total_steps(cfg.dae, steps_per_epoch), model.encoder.hidden_size)

    validation = ctx.splits.validation

    def evaluate() -> dict[str, float]:
        def collate(items):
            clean = [validation.texts[i] for i in items]
            noisy = [noise.dae(t, validation.ids[i], VALIDATION_EPOCH) for t, i in zip(clean, items)]
            return {**tokenize(noisy), **dae_targets(tokenize, clean)}

        def loss_and_count(b):
            """Per text: (summed token cross-entropy, tokens)."""
            sentence = engine.module.encoder(b["input_ids"], b["attention_mask"])
            token_losses = engine.module.decoder(
                sentence, b["decoder_input_ids"], b["decoder_attention_mask"], b["decoder_labels"]
            )
            return torch.stack([token_losses.sum(1), (b["decoder_labels"] != -100).sum(1).float()], dim=1)

        sums = sharded_apply(loss_and_count, collate, len(validation), eval_batch_size(cfg, phase)).sum(0)
        return {"loss": float(sums[0] / sums[1].clamp(min=1))}

    state = loop.train(
        loop.PhaseRun(phase, engine, steps_per_epoch, batches, lambda eng, b: eng(**b), evaluate),
        cfg,
        ctx.phase_dir(phase),
    )
    truncation_note(tokenize, phase)
    embedding = embedding_report(ctx, phase, engine.module.encoder, tokenize, state.step)
    metrics = {"steps": state.step, "embedding": embedding, "history": state.history}
    save_artifact(ctx, phase, engine, engine.module.encoder, tokenizer, tokenize.max_length, {"metrics": metrics})
    return metrics
