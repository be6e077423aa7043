"""The joint variant's first phase: L = dae_weight * L_DAE + cl_weight * L_CL with one optimiser (eq. 10).

The encoder gets the bottleneck (whose output feeds the decoder, as in phase dae) and the clustering Dense
layer on top (whose output feeds the contrastive loss, as in phase cl). Each micro-batch is a contrastive
batch of the imbalance-corrected set; L_DAE reconstructs those same texts (the first of each pair in pair
mode) from their noisy versions. Optimisation comes from the joint section, noise from dae, the loss and
the imbalance correction from cl. Artifact: like cl's ("DAECL").
"""

from __future__ import annotations

import torch
from torch import nn

from dcl_dist import engine as ds
from dcl_dist import loop
from dcl_dist.data.batching import Tokenize
from dcl_dist.losses.reconstruction import ReconstructionLoss
from dcl_dist.models.decoder import TsdaeDecoder, freeze_body, load_decoder, tie_to_encoder
from dcl_dist.models.encoder import SentenceEncoder
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
    uses_lora,
)


class JointModel(nn.Module):
    """Encoder with the DAE and CL objectives: w_dae * L_DAE(noisy -> clean) + w_cl * L_CL(clean embeddings)."""

    def __init__(
        self,
        encoder: SentenceEncoder,
        decoder: TsdaeDecoder,
        contrastive: nn.Module,
        dae_depth: int,
        dae_weight: float,
        cl_weight: float,
    ):
        super().__init__()
        self.encoder, self.decoder, self.contrastive = encoder, decoder, contrastive
        self.reconstruction = ReconstructionLoss()
        self.dae_depth, self.dae_weight, self.cl_weight = dae_depth, dae_weight, cl_weight

    def forward(self, batch: dict) -> torch.Tensor:
        noisy = self.encoder(batch["dae_input_ids"], batch["dae_attention_mask"], depth=self.dae_depth)
        token_losses = self.decoder(
            noisy, batch["decoder_input_ids"], batch["decoder_attention_mask"], batch["decoder_labels"]
        )
        embeddings = self.encoder(batch["input_ids"], batch["attention_mask"])
        l_dae = self.reconstruction(token_losses, batch["decoder_labels"])
        l_cl = self.contrastive(embeddings, batch["levels"])
        return self.dae_weight * l_dae + self.cl_weight * l_cl


def run(ctx: PhaseContext) -> dict:
    cfg, phase = ctx.cfg, "joint"
    seed_everything(cfg.run.seed)
    encoder, tokenizer = load_start(ctx, phase)
    if cfg.model.bottleneck:
        encoder.add_dense()
    dae_depth = len(encoder.dense)  # the decoder reads the sentence vector after the bottleneck
    encoder.add_dense()
    decoder = load_decoder(cfg.model.name_or_path, cfg.model.attn_implementation)
    if uses_lora(cfg, phase):
        freeze_body(decoder)
    if cfg.dae.tie_decoder:
        tie_to_encoder(decoder, encoder.backbone)
    n_levels = len(ctx.splits.label_names)
    model = JointModel(
        encoder,
        TsdaeDecoder(decoder),
        contrastive_loss(cfg, n_levels),
        dae_depth,
        cfg.joint.dae_weight,
        cfg.joint.cl_weight,
    )
    report_trainable(model, phase)
    tokenize = Tokenize(tokenizer, resolve_max_length(cfg, tokenizer, encoder.backbone))

    steps_per_epoch, batches, record = contrastive_batches(ctx, phase, tokenize, with_dae=True)
    engine = ds.initialize(model, cfg, phase, loop.total_steps(cfg.joint, steps_per_epoch), encoder.hidden_size)

    evaluate = contrastive_evaluator(
        cfg, phase, lambda: engine.module.encoder, tokenize, ctx.splits.validation, n_levels
    )
    state = loop.train(
        loop.PhaseRun(phase, engine, steps_per_epoch, batches, lambda eng, b: eng(b), evaluate),
        cfg,
        ctx.phase_dir(phase),
    )
    truncation_note(tokenize, phase)
    embedding = embedding_report(ctx, phase, engine.module.encoder, tokenize, state.step)
    metrics = {"steps": state.step, "embedding": embedding, "history": state.history, "imbalance_correction": record}
    save_artifact(ctx, phase, engine, engine.module.encoder, tokenizer, tokenize.max_length, {"metrics": metrics})
    return metrics
