"""Contrastive losses against naive per-pair loops, and 2-process gathering against one process."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ablation.losses import LOSSES, contrastive_loss, gather_with_grad


def naive_loss(name: str, z1, z2, temperature: float, normalize: bool, margin: float):
    """Table 4 written out anchor by anchor, pair by pair, with scalar autograd ops."""
    views = list(z1) + list(z2)
    if normalize:
        views = [v / v.norm() for v in views]
    n_views = len(views)
    total = 0.0
    for k in range(n_views):
        pos = (k + n_views // 2) % n_views
        sims = {j: torch.dot(views[k], views[j]) for j in range(n_views) if j != k}
        negs = [j for j in sims if j != pos]
        if name == "nt_xent":
            denom = sum(torch.exp(s / temperature) for s in sims.values())
            total = total - torch.log(torch.exp(sims[pos] / temperature) / denom)
        elif name == "nt_logistic":
            neg = sum(torch.log(torch.sigmoid(-sims[j] / temperature)) for j in negs) / len(negs)
            total = total - torch.log(torch.sigmoid(sims[pos] / temperature)) - neg
        else:
            total = total + sum(torch.clamp(sims[j] - sims[pos] + margin, min=0) for j in negs) / len(negs)
    return total / n_views


def _embeddings(n: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = (torch.randn(n, 6, generator=g, dtype=torch.float64) * scale).requires_grad_()
    z2 = (torch.randn(n, 6, generator=g, dtype=torch.float64) * scale).requires_grad_()
    return z1, z2


def _assert_matches_naive(name, n, temperature, normalize, margin):
    # unnormalised: small scale keeps exp/sigmoid of the naive loop inside float64 range
    z1, z2 = _embeddings(n, seed=n, scale=1.0 if normalize else 0.4)
    got = contrastive_loss(name, z1, z2, temperature=temperature, normalize=normalize, margin=margin)
    want = naive_loss(name, z1, z2, temperature, normalize, margin)
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

WORLD = 2
CASES = [(name, normalize) for name in LOSSES for normalize in (True, False)]


def _batch() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """The same tiny projection layer and 8-image batch in every process."""
    g = torch.Generator().manual_seed(123)
    layer = torch.nn.Linear(5, 4, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 5, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    x1 = torch.randn(8, 5, generator=g, dtype=torch.float64)
    x2 = x1 + 0.3 * torch.randn(8, 5, generator=g, dtype=torch.float64)
    return layer, x1, x2


def _loss_and_grads(name: str, normalize: bool, rows: slice) -> tuple[torch.Tensor, list[torch.Tensor]]:
    layer, x1, x2 = _batch()
    loss = contrastive_loss(name, layer(x1[rows]), layer(x2[rows]), temperature=0.2, normalize=normalize, margin=0.5)
    loss.backward()
    return loss.detach(), [p.grad for p in layer.parameters()]


def _worker(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {}
    for name, normalize in CASES:
        half = 8 // WORLD
        loss, grads = _loss_and_grads(name, normalize, slice(rank * half, (rank + 1) * half))
        for t in [loss, *grads]:  # DDP-style mean over ranks
            dist.all_reduce(t)
            t /= WORLD
        results[(name, normalize)] = (loss, grads)
    if rank == 0:
        torch.save(results, out)
    # Both ranks wait until the results are saved, then leave without running torch's C++ static
    # destructors: at interpreter exit they sometimes abort ("terminate called without an active
    # exception", SIGABRT) after all the work is done, which would fail the test for no reason.
    dist.barrier()
    os._exit(0)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path: Path):
    out = tmp_path / "dist.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    results = torch.load(out)
    for name, normalize in CASES:
        loss, grads = _loss_and_grads(name, normalize, slice(None))
        got_loss, got_grads = results[(name, normalize)]
        torch.testing.assert_close(got_loss, loss, msg=f"{name} normalize={normalize}: loss")
        torch.testing.assert_close(got_grads, grads, msg=f"{name} normalize={normalize}: grads")
