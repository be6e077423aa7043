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
from dcl_dist.models import packing as packing_

VOCAB_MULTIPLE_ON_GPU = 64
"""The vocabulary projection runs on a vocabulary padded to a multiple of this on a GPU (VocabProjection)."""


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
    name_or_path: str,
    attn_implementation: str,
    encoder_backbone: nn.Module,
    tied: bool,
    lora: bool,
    packing: str = "auto",
) -> TsdaeDecoder:
    """The TSDAE decoder of phases dae and joint: tied to the encoder's body (dae.tie_decoder), and in a LoRA phase
    with its own pretrained body frozen (frozen before tying: the shared layers keep the encoder's settings)."""
    decoder = load_decoder(name_or_path, attn_implementation)
    if lora:
        freeze_body(decoder)
    if tied:
        tie_to_encoder(decoder, encoder_backbone)
    pad_vocabulary(decoder)
    return TsdaeDecoder(decoder, packing)


class VocabProjection(nn.Module):
    """The LM head's output layer (hidden -> vocabulary logits), computed over a vocabulary padded with zero rows
    to a multiple of `multiple` on a GPU, the padding's logits sliced off: never predicted, the loss unchanged.

    RoBERTa's 50,265 words are no multiple of 8, and on an H100 the projection and its gradients ran on
    Turing-era fallback kernels (92 of 324 ms of GPU time in 3 dae steps, docs/results/h100/profile_dae.txt).
    On a CPU nothing is padded: the layer is the plain Linear it replaces, to the bit. It holds the replaced
    layer's own parameters (tied to the word embeddings), under the same names.
    """

    def __init__(self, linear: nn.Linear, multiple: int | None = None):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.multiple = multiple
        """None: VOCAB_MULTIPLE_ON_GPU on a GPU, 1 (no padding) on a CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vocab = self.weight.shape[0]
        multiple = self.multiple or (VOCAB_MULTIPLE_ON_GPU if x.is_cuda else 1)
        pad = -vocab % multiple
        if pad == 0:
            return nn.functional.linear(x, self.weight, self.bias)
        weight = nn.functional.pad(self.weight, (0, 0, 0, pad))
        bias = nn.functional.pad(self.bias, (0, pad)) if self.bias is not None else None
        return nn.functional.linear(x, weight, bias)[..., :vocab]


def pad_vocabulary(decoder: nn.Module, multiple: int | None = None) -> None:
    """Put a VocabProjection in place of the decoder's output layer (the same parameters, the same names)."""
    output = decoder.get_output_embeddings()
    if not isinstance(output, nn.Linear):
        return
    name = next(n for n, m in decoder.named_modules() if m is output)
    decoder.set_submodule(name, VocabProjection(output, multiple))


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

    def __init__(self, decoder: nn.Module, packing: str = "auto"):
        super().__init__()
        self.decoder = decoder
        self.packing = packing
        """model.packing: auto, always or never (models/packing.py)."""

    def forward(
        self,
        sentence: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor,
        decoder_labels: torch.Tensor,
    ) -> torch.Tensor:
        """sentence (batch, hidden) -> token cross-entropy (batch, seq), 0 where the label is padding (-100)."""
        keep = decoder_labels != -100
        config = self.decoder.config
        plan = packing_.plan(keep, self.packing) if packing_.supports_packing(config) else None
        if plan is None:
            states = self.decoder.base_model(
                input_ids=decoder_input_ids,
                # causal attention with right padding: no real token sees a pad, so no padding mask is needed, and
                # without one the attention kernel takes its plain causal path
                attention_mask=None,
                encoder_hidden_states=sentence.unsqueeze(1),  # the decoder's only memory: (batch, 1, hidden)
                encoder_attention_mask=decoder_attention_mask.new_ones(sentence.shape[0], 1),
                use_cache=False,
            ).last_hidden_state[keep]
        else:
            states = plan.gather(self._packed_states(plan, sentence, decoder_input_ids))
        # the vocabulary projection is the costliest layer here: only at real target tokens
        losses = token_cross_entropy(lm_head(self.decoder)(states), decoder_labels[keep])
        return losses.new_zeros(decoder_labels.shape).masked_scatter(keep, losses)

    def _packed_states(self, plan: packing_.Plan, sentence: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(rows, width, hidden) decoder states of the packed targets: a causal block per text, and as memory the
        sentence vectors of the row's texts, each token seeing its own text's. Only the inputs that have a label
        are packed: the last input of a shorter text (its [SEP]) predicts padding, and under causal attention
        no earlier token sees it."""
        config = self.decoder.config
        body = self.decoder.base_model
        dtype = packing_.mask_dtype(body)
        return body(
            input_ids=plan.pack(input_ids, config.pad_token_id or 0),
            attention_mask=plan.self_attention_mask(causal=True, dtype=dtype),
            position_ids=plan.positions(packing_.first_position(config)),
            encoder_hidden_states=sentence[plan.texts.clamp(min=0)],  # (rows, texts per row, hidden)
            encoder_attention_mask=plan.cross_attention_mask(dtype),
            use_cache=False,
        ).last_hidden_state
