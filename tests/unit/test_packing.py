"""Packed rows (models/packing.py) give what padded rows give: the same embeddings, token losses and gradients in
every phase's model (fp32 within 1e-5), for BERT- and RoBERTa-style models (RoBERTa's positions start after
padding_idx), with SDPA and eager attention; and the padded vocabulary projection changes no loss."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from dcl_dist.data.batching import Example, Noise, Tokenize, dae_batch, ft_batch, pair_batch
from dcl_dist.losses.classification import ClassificationLoss
from dcl_dist.losses.pair_cosine import InBatchCosineLoss, PairCosineLoss, level_weights
from dcl_dist.models.decoder import VocabProjection, build_tsdae_decoder, lm_head
from dcl_dist.models.encoder import SentenceEncoder, load_backbone
from dcl_dist.models.head import Classifier, ClassifierHead
from dcl_dist.models.packing import plan
from dcl_dist.phases.dae import DaeModel
from helpers import make_tiny_model

TOLERANCE = 1e-5
"""fp32 on the CPU; measured differences are at most 2e-6 (products over other shapes, sums in another order)."""

TEXTS = [
    "what will the weather be like in the north of scotland tomorrow morning at nine",
    "play",
    "add this song to my evening playlist",
    "ok",
    "book a table for two at an italian restaurant",
    "rate it five",
    "find the movie schedule",
    "hi there",
]


@pytest.fixture(scope="module", params=["bert", "roberta"])
def model_dir(request, tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp(request.param), request.param, dropout=0.0)


def _examples(n: int = len(TEXTS)) -> list[Example]:
    return [Example(t, (i % 3,), i) for i, t in enumerate(TEXTS[:n])]


def _loss_and_grads(model: torch.nn.Module, loss_of) -> dict:
    model.zero_grad(set_to_none=True)
    loss = loss_of(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), "grads": grads}


def _both(model: torch.nn.Module, loss_of) -> tuple[dict, dict]:
    """(loss and gradients padded, the same packed): loss_of(model) computes the loss."""
    out = []
    for packing in ("never", "always"):
        for m in model.modules():
            if hasattr(m, "packing"):
                m.packing = packing
        out.append(_loss_and_grads(model, loss_of))
    return out[0], out[1]


def _dae_model_and_batch(model_dir) -> tuple[DaeModel, dict]:
    """Phase dae's model (encoder + tied TSDAE decoder, seeded) and a noisy batch of the test texts."""
    tokenize = Tokenize(AutoTokenizer.from_pretrained(model_dir), 24)
    batch = dae_batch(tokenize, Noise(0, 0.3), _examples())
    torch.manual_seed(0)
    encoder = SentenceEncoder(load_backbone(str(model_dir)), "mean", n_dense=1)
    model = DaeModel(encoder, build_tsdae_decoder(str(model_dir), "sdpa", encoder.backbone, tied=True, lora=False))
    return model, batch


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Within TOLERANCE of the larger of 1 and the tensor's largest value (a gradient summed over tokens is large)."""
    return (a - b).abs().max().item() <= TOLERANCE * max(1.0, a.abs().max().item())


def _assert_same(padded: dict, packed: dict) -> None:
    assert _close(padded["loss"], packed["loss"])
    assert padded["grads"].keys() == packed["grads"].keys() and padded["grads"]
    for name, grad in padded["grads"].items():
        assert _close(grad, packed["grads"][name]), name


def test_the_plan_places_every_token_once_in_fewer_rows():
    lengths = [16, 2, 9, 2, 11, 4, 6, 3]
    keep = torch.arange(16)[None, :] < torch.tensor(lengths)[:, None]
    p = plan(keep, "always")
    assert p.rows < len(lengths) and p.width == 16
    assert len(set(p.index.tolist())) == sum(lengths)
    segments = p.segments.flatten()
    for text, length in enumerate(lengths):  # each text is contiguous, in order, at offsets 0..length-1
        slots = (segments == text).nonzero().flatten()
        assert slots.tolist() == list(range(slots[0], slots[0] + length))
        assert p.offsets.flatten()[slots].tolist() == list(range(length))
    assert plan(keep, "never") is None
    assert plan(torch.ones(8, 16, dtype=torch.bool), "auto") is None  # nothing to save: stays padded


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_embeddings_equal_padded(model_dir, attn, pooling):
    tokenize = Tokenize(AutoTokenizer.from_pretrained(model_dir), 24)
    batch = tokenize(TEXTS)
    torch.manual_seed(0)
    encoder = SentenceEncoder(load_backbone(str(model_dir), attn), pooling, n_dense=1)
    assert plan(batch["attention_mask"].bool(), "always").rows < len(TEXTS)
    encoder.eval()
    encoder.packing = "never"
    embeddings = encoder(batch["input_ids"], batch["attention_mask"])
    encoder.packing = "always"
    assert (embeddings - encoder(batch["input_ids"], batch["attention_mask"])).abs().max() <= TOLERANCE
    padded, packed = _both(encoder, lambda m: m(batch["input_ids"], batch["attention_mask"]).pow(2).sum())
    _assert_same(padded, packed)


def test_phase_dae_packed_equals_padded(model_dir):
    model, batch = _dae_model_and_batch(model_dir)
    padded, packed = _both(model, lambda m: m(**batch))
    _assert_same(padded, packed)


@pytest.mark.parametrize("mode", ["pair", "in_batch"])
def test_phase_cl_packed_equals_padded(model_dir, mode):
    tokenize = Tokenize(AutoTokenizer.from_pretrained(model_dir), 24)
    examples = _examples()
    if mode == "pair":
        batch = pair_batch(tokenize, Noise(0), examples[:4], examples[4:], with_dae=False)
        loss_fn = PairCosineLoss(level_weights(1, None))
    else:
        batch = {**tokenize(TEXTS), "levels": torch.tensor([e.levels for e in examples])}
        loss_fn = InBatchCosineLoss(level_weights(1, None))
    torch.manual_seed(0)
    encoder = SentenceEncoder(load_backbone(str(model_dir)), "mean", n_dense=2)
    padded, packed = _both(encoder, lambda m: loss_fn(m(batch["input_ids"], batch["attention_mask"]), batch["levels"]))
    _assert_same(padded, packed)


def test_phase_ft_packed_equals_padded(model_dir):
    tokenize = Tokenize(AutoTokenizer.from_pretrained(model_dir), 24)
    batch = ft_batch(tokenize, _examples())
    torch.manual_seed(0)
    encoder = SentenceEncoder(load_backbone(str(model_dir)), "mean")
    model = Classifier(encoder, ClassifierHead(encoder.hidden_size, 16, 3, dropout=0.0))
    loss_fn = ClassificationLoss()
    padded, packed = _both(model, lambda m: loss_fn(m(batch["input_ids"], batch["attention_mask"]), batch["labels"]))
    _assert_same(padded, packed)


def test_padded_vocabulary_projection_changes_no_loss(model_dir):
    model, batch = _dae_model_and_batch(model_dir)
    encoder = model.encoder
    projection = model.decoder.decoder.get_output_embeddings()
    assert isinstance(projection, VocabProjection)
    assert projection.weight is encoder.backbone.get_input_embeddings().weight  # still tied
    vocab = projection.weight.shape[0]
    assert vocab % 64  # the tiny model's 30,522 words: padded to 30,528
    assert lm_head(model.decoder.decoder)(torch.zeros(3, encoder.hidden_size)).shape == (3, vocab)

    results = []
    for multiple in (1, 64):
        projection.multiple = multiple
        results.append(_loss_and_grads(model, lambda m: m(**batch)))
    _assert_same(*results)


@pytest.mark.slow
def test_compiled_bodies_give_the_eager_embeddings_and_keep_parameter_names(model_dir):
    from dcl_dist.engine import compile_bodies

    tokenize = Tokenize(AutoTokenizer.from_pretrained(model_dir), 24)
    batch = tokenize(TEXTS)
    torch.manual_seed(0)
    encoder = SentenceEncoder(load_backbone(str(model_dir)), "mean", n_dense=1).eval()
    names = [n for n, _ in encoder.named_parameters()]
    eager = encoder(batch["input_ids"], batch["attention_mask"])
    assert compile_bodies(encoder, 3) == 0  # not with ZeRO-3
    assert compile_bodies(encoder, 0) == 1
    assert [n for n, _ in encoder.named_parameters()] == names  # checkpoints and ZeRO partitions unchanged
    for packing in ("never", "always"):
        encoder.packing = packing
        assert (eager - encoder(batch["input_ids"], batch["attention_mask"])).abs().max() <= TOLERANCE
