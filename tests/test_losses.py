"""Contrastive losses against naive per-pair loops, and 2-process gathering against one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import two_processes as two

from ablation.dist import gather_with_grad
from ablation.losses import LOSSES, SEMI_HARD_LOSSES, contrastive_loss


def naive_loss(name: str, z1, z2, temperature: float, normalize: bool, margin: float, semi_hard: bool = False):
    """Table 4 written out anchor by anchor, pair by pair, with scalar autograd ops.

    Semi-hard: an anchor keeps the negatives less similar than its positive; none kept, no negative term.
    """
    views = list(z1) + list(z2)
    if normalize:
        views = [v / v.norm() for v in views]
    n_views = len(views)
    total = 0.0
    for k in range(n_views):
        pos = (k + n_views // 2) % n_views
        sims = {j: torch.dot(views[k], views[j]) for j in range(n_views) if j != k}
        negs = [j for j in sims if j != pos and (not semi_hard or sims[j].item() < sims[pos].item())]
        if name == "nt_xent":
            denom = sum(torch.exp(s / temperature) for s in sims.values())
            total = total - torch.log(torch.exp(sims[pos] / temperature) / denom)
        elif name == "nt_logistic":
            neg = sum(torch.log(torch.sigmoid(-sims[j] / temperature)) for j in negs) / max(len(negs), 1)
            total = total - torch.log(torch.sigmoid(sims[pos] / temperature)) - neg
        else:
            total = total + sum(torch.clamp(sims[j] - sims[pos] + margin, min=0) for j in negs) / max(len(negs), 1)
    return total / n_views


def _embeddings(n: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = (torch.randn(n, 6, generator=g, dtype=torch.float64) * scale).requires_grad_()
    z2 = (torch.randn(n, 6, generator=g, dtype=torch.float64) * scale).requires_grad_()
    return z1, z2


def _assert_matches_naive(name, n, temperature, normalize, margin, semi_hard=False):
    # unnormalised: small scale keeps exp/sigmoid of the naive loop inside float64 range
    z1, z2 = _embeddings(n, seed=n, scale=1.0 if normalize else 0.4)
    got = contrastive_loss(
        name, z1, z2, temperature=temperature, normalize=normalize, margin=margin, semi_hard=semi_hard
    )
    want = naive_loss(name, z1, z2, temperature, normalize, margin, semi_hard)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, (z1, z2)), torch.autograd.grad(want, (z1, z2)))


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("name", ["nt_xent", "nt_logistic"])
def test_temperature_losses_match_naive(name, temperature, normalize, n):
    _assert_matches_naive(name, n, temperature, normalize, margin=1.0)


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_margin_matches_naive(margin, normalize, n):
    _assert_matches_naive("margin", n, 0.5, normalize, margin)


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("name", SEMI_HARD_LOSSES)
def test_semi_hard_mining_matches_naive(name, normalize, n):
    _assert_matches_naive(name, n, 0.5, normalize, margin=0.5, semi_hard=True)


def test_semi_hard_keeps_only_negatives_below_the_positive():
    # image 0's views agree (s+ = 1), so every negative counts; image 1's views are opposite
    # (s+ = -1), so none does and its anchors keep only the positive term
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    mined = contrastive_loss("margin", z1, z2, margin=0.5, semi_hard=True)
    # anchors of image 0: negatives (0, 1) and (0, -1) at s = 0, hinge 0 - 1 + 0.5 < 0 -> 0
    assert mined.item() == 0.0
    plain = contrastive_loss("margin", z1, z2, margin=0.5)
    assert plain.item() > 0.0  # image 1's anchors see negatives at s = 0 > s+ = -1
    with pytest.raises(ValueError, match=r"semi-hard.*not 'nt_xent'"):
        contrastive_loss("nt_xent", z1, z2, semi_hard=True)


def test_margin_ignores_temperature():
    z1, z2 = _embeddings(4, seed=0)
    a = contrastive_loss("margin", z1, z2, temperature=0.1)
    assert a == contrastive_loss("margin", z1, z2, temperature=2.0)


def test_nt_xent_is_stable_for_large_logits():
    # unnormalised, tau=0.05: logits reach ~1e4, where a naive exp overflows even in float64
    z1, z2 = _embeddings(8, seed=1, scale=30.0)
    for name in LOSSES:
        loss = contrastive_loss(name, z1.float(), z2.float(), temperature=0.05, normalize=False)
        (g1,) = torch.autograd.grad(loss, z1)
        assert torch.isfinite(loss) and torch.isfinite(g1).all()


def test_perfect_alignment_reaches_known_minimum():
    # views identical, all other images orthogonal: NT-Xent = log(1 + (2N-2) * exp(0) / exp(1/tau))
    n, tau = 4, 0.5
    z = torch.eye(n, dtype=torch.float64)
    want = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    assert contrastive_loss("nt_xent", z, z.clone(), temperature=tau).item() == pytest.approx(want)
    assert contrastive_loss("margin", z, z.clone(), margin=0.5).item() == 0.0


def test_bf16_autocast_computes_similarities_in_float32():
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(16, 32)
    x1, x2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = layer(x1), layer(x2)
        assert z1.dtype == torch.bfloat16
        loss = contrastive_loss("nt_xent", z1, z2, temperature=0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, contrastive_loss("nt_xent", z1.float(), z2.float(), temperature=0.1))
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_bad_inputs_raise_clear_errors():
    z1, z2 = _embeddings(4, seed=0)
    with pytest.raises(ValueError, match="unknown loss 'nt_xnet' \\(did you mean 'nt_xent'\\?\\)"):
        contrastive_loss("nt_xnet", z1, z2)
    with pytest.raises(ValueError, match="at least 2 images"):
        contrastive_loss("nt_xent", z1[:1], z2[:1])
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss("nt_xent", z1, z2[:3])
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss("nt_xent", z1, z2, temperature=0.0)


def test_gather_is_identity_without_distributed():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


# ---- two processes (gloo) against one process on the same total batch ----

CASES = [(name, normalize, False) for name in LOSSES for normalize in (True, False)] + [
    (name, True, True) for name in SEMI_HARD_LOSSES
]


def _loss_and_grads(
    name: str, normalize: bool, semi_hard: bool, rows: slice
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    def loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(name, z1, z2, temperature=0.2, normalize=normalize, margin=0.5, semi_hard=semi_hard)

    return two.loss_and_grads(loss, rows, seed=123, out_dim=4, noise=0.3)


def _worker(rank: int, init_file: str, out: str) -> None:
    two.join(rank, init_file)
    results = {}
    for case in CASES:
        loss, grads = _loss_and_grads(*case, two.shard(rank))
        two.rank_mean([loss, *grads])
        results[case] = (loss, grads)
    two.finish(rank, results, out)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path: Path):
    results = two.spawn(_worker, tmp_path)[0]
    for case in CASES:
        loss, grads = _loss_and_grads(*case, slice(None))
        got_loss, got_grads = results[case]
        torch.testing.assert_close(got_loss, loss, msg=f"{case}: loss")
        torch.testing.assert_close(got_grads, grads, msg=f"{case}: grads")
