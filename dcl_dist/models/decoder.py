"""The TSDAE decoder: a causal-LM copy of the checkpoint with cross-attention to the sentence vector.

Tied (the default), its body is the encoder's own modules: every leaf module (Linear, LayerNorm, Embedding)
that the encoder also has at the same path is replaced by the encoder's, so one parameter lives in both and
ZeRO sees it once. Sharing leaves rather than whole attention blocks keeps the decoder's own causal settings.
Only the cross-attention blocks and the LM head's transform are the decoder's alone. With LoRA, a shared
layer is the encoder's LoRA-wrapped Linear, so the decoder trains the encoder's adapter.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from dcl_dist.errors import ModelError
from dcl_dist.losses.reconstruction import token_cross_entropy


def load_decoder(name_or_path: str, attn_implementation: str = "sdpa") -> nn.Module:
    """The checkpoint as a causal LM with cross-attention (e.g. BertLMHeadModel, RobertaForCausalLM)."""
    config = AutoConfig.from_pretrained(name_or_path)
    config.is_decoder = True
    config.add_cross_attention = True
    try:
        return AutoModelForCausalLM.from_pretrained(
            name_or_path, config=config, attn_implementation=attn_implementation
        )
    except (ValueError, KeyError) as e:
        raise ModelError(
            f"model type '{config.model_type}' of {name_or_path} has no causal-LM decoder with cross-attention in"
            f" transformers ({e}), which phase dae needs: use a BERT-, RoBERTa-, ELECTRA- or XLM-R-style encoder,"
            " or a variant without phase dae (cl_ft, ft)"
        ) from None


def build_tsdae_decoder(
    name_or_path: str, attn_implementation: str, encoder_backbone: nn.Module, tied: bool, lora: bool
) -> TsdaeDecoder:
    """The TSDAE decoder of phases dae and joint: tied to the encoder's body (dae.tie_decoder), and in a LoRA phase
    with its own pretrained body frozen (frozen before tying: the shared layers keep the encoder's settings)."""
    decoder = load_decoder(name_or_path, attn_implementation)
    if lora:
        freeze_body(decoder)
    if tied:
        tie_to_encoder(decoder, encoder_backbone)
    return TsdaeDecoder(decoder)


def tie_to_encoder(decoder: nn.Module, encoder_backbone: nn.Module) -> int:
    """Make the decoder's body share the encoder's leaf modules; returns how many leaves are shared.

    A LoRA-wrapped Linear of the encoder counts as one leaf: the decoder gets the wrapped module, so its use of
    the layer trains the same adapter.
    """
    body = decoder.base_model
    encoder_leaves = _shareable_leaves(encoder_backbone)
    shared = 0
    for name, module in list(body.named_modules()):
        if list(module.children()) or not list(module.parameters(recurse=False)):
            continue
        twin = encoder_leaves.get(name)
        base = twin.get_base_layer() if isinstance(twin, BaseTunerLayer) else twin
        if twin is not None and type(base) is type(module) and _same_shapes(base, module):
            body.set_submodule(name, twin)
            shared += 1
    if getattr(decoder.config, "tie_word_embeddings", True):
        decoder.get_output_embeddings().weight = decoder.get_input_embeddings().weight
    return shared


def _shareable_leaves(backbone: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules by path; a peft-wrapped layer is one leaf (its base layer and adapters go together)."""
    out: dict[str, nn.Module] = {}
    wrapped: list[str] = []
    for name, module in backbone.named_modules():  # parents come before their children
        if any(name.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(module, BaseTunerLayer):
            wrapped.append(name)
            out[name] = module
        elif not list(module.children()):
            out[name] = module
    return out


def freeze_body(decoder: nn.Module) -> None:
    """Freeze the decoder's pretrained body (LoRA phases); its cross-attention and LM-head transform still train.

    Call before tie_to_encoder: the encoder's shared modules keep their own settings (their adapters train).
    """
    embeddings = {id(decoder.get_input_embeddings().weight), id(decoder.get_output_embeddings().weight)}
    body = decoder.base_model_prefix + "."
    for name, param in decoder.named_parameters():
        own = "crossattention" in name or not name.startswith(body)
        param.requires_grad_(own and id(param) not in embeddings)


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(pa[k].shape == pb[k].shape for k in pa)


def lm_head(decoder: nn.Module) -> nn.Module:
    """The decoder's head (hidden -> vocabulary logits): every child that is not the body."""
    heads = [m for name, m in decoder.named_children() if name != decoder.base_model_prefix]
    if len(heads) != 1:
        raise ModelError(f"cannot find the LM head of {type(decoder).__name__}")
    return heads[0]


class TsdaeDecoder(nn.Module):
    """Reconstructs the clean text from one sentence vector; vocabulary logits only where there is a token."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(
        self,
        sentence: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor,
        decoder_labels: torch.Tensor,
    ) -> torch.Tensor:
        """sentence (batch, hidden) -> token cross-entropy (batch, seq), 0 where the label is padding (-100)."""
        states = self.decoder.base_model(
            input_ids=decoder_input_ids,
            # causal attention with right padding: no real token sees a pad, so no padding mask is needed, and
            # without one the attention kernel takes its plain causal path
            attention_mask=None,
            encoder_hidden_states=sentence.unsqueeze(1),  # the decoder's only memory: (batch, 1, hidden)
            encoder_attention_mask=decoder_attention_mask.new_ones(sentence.shape[0], 1),
            use_cache=False,
        ).last_hidden_state
        keep = decoder_labels != -100
        # the vocabulary projection is the costliest layer here: skip the padded positions
        losses = token_cross_entropy(lm_head(self.decoder)(states[keep]), decoder_labels[keep])
        return losses.new_zeros(decoder_labels.shape).masked_scatter(keep, losses)
