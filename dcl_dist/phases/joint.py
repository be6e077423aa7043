"""The joint variant's first phase: L = dae_weight * L_DAE + cl_weight * L_CL with one optimiser (eq. 10).

The encoder gets the bottleneck (whose output feeds the decoder, as in phase dae) and the clustering Dense
layer on top (whose output feeds the contrastive loss, as in phase cl). Each micro-batch is a contrastive
batch of the imbalance-corrected set; L_DAE reconstructs those same texts (the first of each pair in pair
mode) from their noisy versions. Optimisation comes from the joint section, noise from dae, the loss, the
imbalance correction and the cached chunks (cl.embed_chunk_size, for both objectives) from cl. Artifact: like cl's
("DAECL").
"""

from __future__ import annotations

import torch
from torch import nn

from dcl_dist import loop
from dcl_dist.data.batching import Tokenize
from dcl_dist.losses.reconstruction import ReconstructionLoss
from dcl_dist.models.chunked import forward_in_chunks
from dcl_dist.models.decoder import TsdaeDecoder, build_tsdae_decoder
from dcl_dist.models.encoder import SentenceEncoder
from dcl_dist.phases.context import PhaseContext
from dcl_dist.phases.contrastive import contrastive_evaluator, contrastive_loss
from dcl_dist.phases.feed import contrastive_feed
from dcl_dist.phases.outputs import finish, record_base
from dcl_dist.phases.start import (
    load_start,
    report_trainable,
    resolve_max_length,
    seed_everything,
    start_engine,
    uses_lora,
)


class JointModel(nn.Module):
    """Encoder with the DAE and CL objectives: w_dae * L_DAE(noisy -> clean) + w_cl * L_CL(clean embeddings).

    With chunk_size, both passes run in cached chunks (models/chunked.py): the denoising one is a per-text loss,
    so its chunks need only their token losses; the contrastive loss sees every embedding of the micro-batch.
    """

    def __init__(
        self,
        encoder: SentenceEncoder,
        decoder: TsdaeDecoder,
        contrastive: nn.Module,
        dae_depth: int,
        dae_weight: float,
        cl_weight: float,
        chunk_size: int | None = None,
    ):
        super().__init__()
        self.encoder, self.decoder, self.contrastive = encoder, decoder, contrastive
        self.reconstruction = ReconstructionLoss()
        self.dae_depth, self.dae_weight, self.cl_weight = dae_depth, dae_weight, cl_weight
        self.chunk_size = chunk_size

    def token_losses(
        self,
        dae_input_ids: torch.Tensor,
        dae_attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor,
        decoder_labels: torch.Tensor,
    ) -> torch.Tensor:
        """(batch, seq) reconstruction losses of the clean texts from the noisy ones' sentence vectors."""
        noisy = self.encoder(dae_input_ids, dae_attention_mask, depth=self.dae_depth)
        return self.decoder(noisy, decoder_input_ids, decoder_attention_mask, decoder_labels)

    def forward(self, batch: dict) -> torch.Tensor:
        names = ("dae_input_ids", "dae_attention_mask", "decoder_input_ids", "decoder_attention_mask", "decoder_labels")
        token_losses = forward_in_chunks(self.token_losses, self.chunk_size, **{k: batch[k] for k in names})
        embeddings = forward_in_chunks(
            self.encoder, self.chunk_size, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
        l_dae = self.reconstruction(token_losses, batch["decoder_labels"])
        l_cl = self.contrastive(embeddings, batch["levels"], batch.get("sources"))
        return self.dae_weight * l_dae + self.cl_weight * l_cl


def build_model(ctx: PhaseContext) -> tuple[JointModel, object]:
    """The encoder this phase starts from, plus the bottleneck (read by the tied decoder) and the clustering layer."""
    cfg, phase = ctx.cfg, "joint"
    encoder, tokenizer = load_start(ctx, phase)
    if cfg.model.bottleneck:
        encoder.add_dense()
    dae_depth = len(encoder.dense)  # the decoder reads the sentence vector after the bottleneck
    encoder.add_dense()
    decoder = build_tsdae_decoder(
        cfg.model.name_or_path,
        cfg.model.attn_implementation,
        encoder.backbone,
        tied=cfg.dae.tie_decoder,
        lora=uses_lora(cfg, phase),
        packing=cfg.model.packing,
    )
    contrastive = contrastive_loss(cfg, len(ctx.splits.label_names))
    model = JointModel(
        encoder,
        decoder,
        contrastive,
        dae_depth,
        cfg.joint.dae_weight,
        cfg.joint.cl_weight,
        cfg.cl.embed_chunk_size,
    )
    return model, tokenizer


def run(ctx: PhaseContext) -> dict:
    cfg, phase = ctx.cfg, "joint"
    seed_everything(cfg.run.seed)
    model, tokenizer = build_model(ctx)
    report_trainable(model, phase)
    encoder = model.encoder
    tokenize = Tokenize(tokenizer, resolve_max_length(cfg, tokenizer, encoder.backbone))
    feed, correction = contrastive_feed(ctx, phase, tokenize, with_dae=True)
    model_engine = start_engine(ctx, phase, model, encoder.hidden_size, feed.steps_per_epoch)
    record_base(ctx, phase, model_engine.module.encoder, tokenize)

    n_levels = len(ctx.splits.label_names)
    evaluate = contrastive_evaluator(ctx, phase, model_engine.module.encoder, tokenize, n_levels)
    state = loop.train(
        loop.PhaseRun(phase, model_engine, feed, lambda model_engine, batch: model_engine(batch), evaluate),
        cfg,
        ctx.phase_dir(phase),
        ctx.resume,
    )
    metrics = {"steps": state.step, "history": state.history, "imbalance_correction": correction}
    return finish(ctx, phase, model_engine, model_engine.module.encoder, tokenizer, tokenize, state, metrics)
