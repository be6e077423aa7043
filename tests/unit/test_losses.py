import itertools

import pytest
import torch

from dcl_dist.losses.pair_cosine import InBatchCosineLoss, PairCosineLoss, all_pairs_cosine_mse, level_weights
from dcl_dist.losses.supcon import SupConLoss


def brute_force(z, levels, weights):
    total, count = 0.0, 0
    for i, j in itertools.combinations(range(len(z)), 2):
        t = sum(w for w, a, b in zip(weights, levels[i], levels[j]) if a == b)
        cos = torch.nn.functional.cosine_similarity(z[i], z[j], dim=0)
        total += (t - cos) ** 2
        count += 1
    return total / count


def test_in_batch_loss_is_the_mean_over_pairs():
    torch.manual_seed(0)
    z = torch.randn(9, 5, dtype=torch.float64)
    levels = torch.tensor([[0], [1], [0], [2], [1], [1], [0], [2], [2]])
    w = level_weights(1, None).double()
    assert all_pairs_cosine_mse(z, levels, w).item() == pytest.approx(brute_force(z, levels.tolist(), [1.0]).item())
    assert InBatchCosineLoss(w)(z, levels).item() == pytest.approx(brute_force(z, levels.tolist(), [1.0]).item())


def test_hierarchical_targets_default_to_equal_weights():
    w = level_weights(2, None)
    assert w.tolist() == [0.5, 0.5]
    z = torch.randn(6, 4, dtype=torch.float64)
    levels = torch.tensor([[0, 0], [1, 0], [2, 1], [0, 0], [3, 1], [1, 0]])
    expected = brute_force(z, levels.tolist(), [0.5, 0.5]).item()
    assert all_pairs_cosine_mse(z, levels, w.double()).item() == pytest.approx(expected)


def test_pair_loss():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    levels = torch.tensor([[0], [1], [0], [1]])  # pairs (u0, v0) same class, (u1, v1) same class
    loss = PairCosineLoss(level_weights(1, None))(torch.cat([u, v]), levels)
    assert loss.item() == pytest.approx((0.0 + 1.0) / 2)  # cos 1 -> 0 error; cos 0 -> (1 - 0)^2


def test_supcon_matches_a_loop():
    torch.manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(7, 3, dtype=torch.float64), dim=-1)
    labels = [0, 1, 0, 1, 2, 0, 3]
    t = 0.5
    per_anchor = []
    for i in range(7):
        positives = [j for j in range(7) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        denom = torch.logsumexp(torch.stack([z[i] @ z[k] / t for k in range(7) if k != i]), 0)
        per_anchor.append(-sum((z[i] @ z[p] / t - denom) for p in positives) / len(positives))
    expected = torch.stack(per_anchor).mean()
    got = SupConLoss(t)(z, torch.tensor(labels)[:, None])
    assert got.item() == pytest.approx(expected.item())
