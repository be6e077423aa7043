"""The in-batch losses in local-rows form on one process: same-source exclusion, block by block, cached chunks."""

import itertools

import pytest
import torch

from dcl_dist.data.batching import Example, Noise, cl_batch, pair_batch
from dcl_dist.losses import local_rows
from dcl_dist.losses.pair_cosine import InBatchCosineLoss, all_pairs_cosine_mse, level_weights
from dcl_dist.losses.supcon import SupConLoss, anchors_with_positive, supcon
from dcl_dist.models.chunked import forward_in_chunks

LEVELS = torch.tensor([[0], [1], [0], [0], [1], [2], [0], [2]])
SOURCES = torch.tensor([10, 11, 10, 12, 11, 13, 10, 14])
"""Source 10 has an original and two copies (rows 0, 2, 6), source 11 one copy (rows 1, 4)."""


def _brute_force_cosine(z, levels, sources):
    total, count = 0.0, 0
    for i, j in itertools.combinations(range(len(z)), 2):
        if sources[i] == sources[j]:
            continue
        cos = torch.nn.functional.cosine_similarity(z[i], z[j], dim=0)
        total += (float(levels[i][0] == levels[j][0]) - cos) ** 2
        count += 1
    return total / count, count


def test_same_source_pairs_are_left_out_of_the_cosine_loss():
    torch.manual_seed(0)
    z = torch.randn(8, 5, dtype=torch.float64)
    expected, unordered = _brute_force_cosine(z, LEVELS.tolist(), SOURCES.tolist())
    # 28 unordered pairs, of which (0, 2), (0, 6), (2, 6) and (1, 4) share a source
    assert unordered == 28 - 4
    assert local_rows.same_source_pairs(SOURCES) == 8 + 2 * 4  # ordered, i == j included
    w = level_weights(1, None).double()
    assert all_pairs_cosine_mse(z, LEVELS, w, SOURCES).item() == pytest.approx(expected.item())
    assert InBatchCosineLoss(w)(z, LEVELS, SOURCES).item() == pytest.approx(expected.item())


def test_every_source_distinct_gives_the_loss_without_sources():
    torch.manual_seed(0)
    z = torch.randn(8, 5, dtype=torch.float64)
    w = level_weights(1, None).double()
    distinct = torch.arange(8)
    assert InBatchCosineLoss(w)(z, LEVELS, distinct).item() == pytest.approx(all_pairs_cosine_mse(z, LEVELS, w).item())
    assert SupConLoss(0.3)(z, LEVELS, distinct).item() == pytest.approx(supcon(z, LEVELS[:, 0], 0.3).item())


def test_a_copy_is_no_positive_for_supcon():
    labels = LEVELS[:, 0]
    # with copies as positives every example has one; without, rows 1 and 4 (class 1) have only each other, copies
    assert anchors_with_positive(labels, torch.arange(8)) == 8
    assert anchors_with_positive(labels, SOURCES) == 6
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(8, 4, dtype=torch.float64), dim=-1)
    t, per_anchor = 0.5, []
    for i in range(8):
        positives = [j for j in range(8) if SOURCES[j] != SOURCES[i] and labels[j] == labels[i]]
        if positives:
            others = [k for k in range(8) if SOURCES[k] != SOURCES[i]]
            denom = torch.logsumexp(torch.stack([z[i] @ z[k] / t for k in others]), 0)
            per_anchor.append(-sum(z[i] @ z[p] / t - denom for p in positives) / len(positives))
    expected = torch.stack(per_anchor).mean().item()
    assert supcon(z, labels, t, SOURCES).item() == pytest.approx(expected)
    assert SupConLoss(t)(z, LEVELS, SOURCES).item() == pytest.approx(expected)


@pytest.mark.parametrize("loss_name", ["cosine_mse", "supcon"])
def test_blocks_of_one_row_give_the_whole_matrix_gradient(loss_name, monkeypatch):
    """Rows taken one at a time (BLOCK_ELEMENTS below N) give the value and gradient of all rows in one block, and
    of the whole matrix at once (the losses compute in fp32: to its rounding)."""
    torch.manual_seed(0)
    z0 = torch.randn(8, 5, dtype=torch.float64)
    w = level_weights(1, None).double()
    loss = InBatchCosineLoss(w) if loss_name == "cosine_mse" else SupConLoss(0.3)

    def local(block_elements: int):
        monkeypatch.setattr(local_rows, "BLOCK_ELEMENTS", block_elements)
        z = z0.clone().requires_grad_()
        value = loss(z, LEVELS, SOURCES)
        (3.0 * value).backward()  # backward scales by grad_output
        return value, z.grad

    (one_row, one_row_grad), (whole, whole_grad) = local(5), local(1 << 20)
    assert one_row.item() == pytest.approx(whole.item(), rel=1e-6)
    torch.testing.assert_close(one_row_grad, whole_grad, rtol=1e-6, atol=1e-7)
    z_ref = z0.clone().requires_grad_()
    if loss_name == "cosine_mse":
        ref = all_pairs_cosine_mse(z_ref, LEVELS, w, SOURCES)
    else:
        ref = supcon(z_ref, LEVELS[:, 0], 0.3, SOURCES)
    (3.0 * ref).backward()
    assert one_row.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(one_row_grad, z_ref.grad, rtol=1e-4, atol=1e-6)


def test_batches_carry_each_examples_source():
    noise = Noise(seed=0)
    examples = [Example("a b c d e f g h", (0,), 7), Example("a b c d e f g h", (0,), 7, copy=1), Example("x", (1,), 9)]

    def tokenize(texts):
        return {"input_ids": torch.zeros(len(texts), 2, dtype=torch.long)}

    assert cl_batch(tokenize, noise, examples, with_dae=False)["sources"].tolist() == [7, 7, 9]
    assert pair_batch(tokenize, noise, examples[:1], examples[2:], with_dae=False)["sources"].tolist() == [7, 9]


class _Noisy(torch.nn.Module):
    """A model whose output depends on dropout masks."""

    def __init__(self):
        super().__init__()
        self.linear, self.dropout = torch.nn.Linear(4, 6), torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(torch.tanh(self.linear(x)))


def test_cached_chunks_replay_dropout(monkeypatch):
    """The recomputed chunks draw the same dropout masks as their forward: the gradient equals that of the same
    chunked forward with its activations kept, and the random stream afterwards is the same too."""
    torch.manual_seed(0)
    model, x = _Noisy(), torch.randn(7, 4)

    def run(kept: bool):
        model.zero_grad()
        torch.manual_seed(1)
        if kept:  # the same chunks, activations kept (no recomputation)
            out = torch.cat([model(part) for part in x.tensor_split(3)])
        else:
            out = forward_in_chunks(model, 3, x=x)
        value = (out.sum(1) ** 2).sum()
        value.backward()
        return value.item(), model.linear.weight.grad.clone(), torch.rand(1).item()

    cached, kept = run(False), run(True)
    assert cached[0] == kept[0]
    assert torch.equal(cached[1], kept[1])
    assert cached[2] == kept[2]
    assert (cached[1] != 0).any()


def test_chunks_need_gradients_to_be_cached():
    model, x = _Noisy().eval(), torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(forward_in_chunks(model, 2, x=x), model(x))
    assert forward_in_chunks(model, None, x=x).grad_fn is not None


@pytest.mark.parametrize("loss_name", ["cosine_mse", "supcon"])
def test_joint_model_in_cached_chunks_equals_one_pass(loss_name, tiny_model_nodrop):
    """Phase joint's model: both objectives in cached chunks give the loss and every gradient of one pass."""
    import copy

    from transformers import AutoTokenizer

    from dcl_dist.data.batching import Tokenize
    from dcl_dist.models.decoder import build_tsdae_decoder
    from dcl_dist.models.encoder import SentenceEncoder, load_backbone
    from dcl_dist.phases.joint import JointModel

    torch.manual_seed(0)
    encoder = SentenceEncoder(load_backbone(str(tiny_model_nodrop), "eager"), "mean", n_dense=2)
    decoder = build_tsdae_decoder(str(tiny_model_nodrop), "eager", encoder.backbone, tied=True, lora=False)
    loss = InBatchCosineLoss(level_weights(1, None)) if loss_name == "cosine_mse" else SupConLoss(0.2)
    words = "rain sun cloud wind storm song play album band track".split()
    examples = [
        Example(" ".join(words[(i + k) % 10] for k in range(3 + i % 5)), (i % 3,), i // 2 * 2 if i % 4 == 3 else i)
        for i in range(7)
    ]
    batch = cl_batch(Tokenize(AutoTokenizer.from_pretrained(str(tiny_model_nodrop)), 24), Noise(0), examples, True)
    assert batch["sources"].unique().numel() < 7  # copies among the examples
    results = []
    for chunk_size in (None, 3):
        fresh_encoder, fresh_decoder = copy.deepcopy((encoder, decoder))  # one copy: the tie stays
        model = JointModel(fresh_encoder, fresh_decoder, loss, 1, 0.6, 0.4, chunk_size)
        value = model(batch)
        value.backward()
        results.append((value.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (cached, cached_grads) = results
    assert cached == pytest.approx(plain, rel=1e-6)
    assert sorted(cached_grads) == sorted(plain_grads)
    for name, g in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], g, rtol=1e-5, atol=1e-7 * max(1.0, g.abs().max().item()))


def test_a_second_backward_through_the_loss_is_refused_not_wrong():
    """Its saved gradients are scaled in place (memory at the step's peak): a retained graph's second backward
    would scale them again, so it raises instead."""
    z = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    loss = InBatchCosineLoss(level_weights(1, None).double())(z, LEVELS, SOURCES)
    loss.backward(retain_graph=True)
    first = z.grad.clone()
    with pytest.raises(RuntimeError, match="cannot be back-propagated twice"):
        loss.backward()
    assert torch.equal(z.grad, first)
