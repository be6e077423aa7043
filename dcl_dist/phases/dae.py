"""Phase 1, dae: adapt the encoder to the data with a TSDAE denoising autoencoder (no labels).

Artifact: encoder + pooling + bottleneck Dense.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dcl_dist import loop
from dcl_dist.data.batching import Noise, Tokenize, dae_targets
from dcl_dist.evaluation import sharded_apply
from dcl_dist.losses.reconstruction import ReconstructionLoss
from dcl_dist.models.decoder import TsdaeDecoder, build_tsdae_decoder
from dcl_dist.models.encoder import SentenceEncoder
from dcl_dist.phases.context import PhaseContext
from dcl_dist.phases.feed import dae_feed
from dcl_dist.phases.outputs import finish, record_base
from dcl_dist.phases.start import (
    load_start,
    report_trainable,
    resolve_max_length,
    seed_everything,
    start_engine,
    uses_lora,
)

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
    decoder = build_tsdae_decoder(
        cfg.model.name_or_path,
        cfg.model.attn_implementation,
        encoder.backbone,
        tied=cfg.dae.tie_decoder,
        lora=uses_lora(cfg, "dae"),
        packing=cfg.model.packing,
    )
    return DaeModel(encoder, decoder), tokenizer


def run(ctx: PhaseContext) -> dict:
    cfg, phase = ctx.cfg, "dae"
    seed_everything(cfg.run.seed)
    model, tokenizer = build_model(ctx)
    report_trainable(model, phase)
    tokenize = Tokenize(tokenizer, resolve_max_length(cfg, tokenizer, model.encoder.backbone))
    noise = Noise(cfg.run.seed, cfg.dae.deletion_ratio)
    feed = dae_feed(ctx, tokenize, noise)
    model_engine = start_engine(ctx, phase, model, model.encoder.hidden_size, feed.steps_per_epoch)
    record_base(ctx, phase, model_engine.module.encoder, tokenize)

    evaluate = validation_loss(ctx, model_engine.module, tokenize, noise)
    state = loop.train(
        loop.PhaseRun(phase, model_engine, feed, lambda model_engine, batch: model_engine(**batch), evaluate),
        cfg,
        ctx.phase_dir(phase),
        ctx.resume,
    )
    metrics = {"steps": state.step, "history": state.history}
    return finish(ctx, phase, model_engine, model_engine.module.encoder, tokenizer, tokenize, state, metrics)


def validation_loss(ctx: PhaseContext, model: DaeModel, tokenize: Tokenize, noise: Noise) -> Callable[[], dict]:
    """The reconstruction loss per token on validation, of texts noised the same way at every evaluation."""
    validation = ctx.splits.validation

    def collate(items: list[int]) -> dict:
        clean = [validation.texts[i] for i in items]
        noisy = [noise.dae(t, validation.ids[i], VALIDATION_EPOCH) for t, i in zip(clean, items)]
        return {**tokenize(noisy), **dae_targets(tokenize, clean)}

    def loss_and_count(b: dict) -> torch.Tensor:
        """Per text: (summed token cross-entropy, tokens)."""
        sentence = model.encoder(b["input_ids"], b["attention_mask"])
        token_losses = model.decoder(sentence, b["decoder_input_ids"], b["decoder_attention_mask"], b["decoder_labels"])
        return torch.stack([token_losses.sum(1), (b["decoder_labels"] != -100).sum(1).float()], dim=1)

    def evaluate() -> dict[str, float]:
        sums = sharded_apply(loss_and_count, collate, len(validation), ctx.eval_batch_size("dae")).sum(0)
        return {"loss": float(sums[0] / sums[1].clamp(min=1))}

    return evaluate
