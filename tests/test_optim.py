"""LARS against a hand-written update, parameter grouping, lr scaling and the warmup-cosine schedule."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from ablation.optim import LARS, build_optimizer, param_groups, scaled_lr, warmup_cosine

LR, MOMENTUM, WD, ETA = 0.5, 0.9, 1e-2, 1e-3


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model


def _set_grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def _manual_lars(model: nn.Module, grad_seeds: list[int]) -> dict[str, torch.Tensor]:
    """The official update, one tensor at a time, in plain arithmetic."""
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    bufs = {name: torch.zeros_like(p) for name, p in params.items()}
    for seed in grad_seeds:
        _set_grads(model, seed)
        for name, p in model.named_parameters():
            w, g = params[name], p.grad.clone()
            if p.ndim > 1:
                g = g + WD * w
                step = LR * (ETA * w.norm() / g.norm()) * g
            else:
                step = LR * g
            bufs[name] = MOMENTUM * bufs[name] + step
            params[name] = w - bufs[name]
    return params


def test_lars_matches_manual_update_over_two_steps():
    model = _model()
    want = _manual_lars(_model(), grad_seeds=[1, 2])
    opt = LARS(param_groups(model, WD), lr=LR, momentum=MOMENTUM, weight_decay=WD, eta=ETA)
    for seed in (1, 2):
        _set_grads(model, seed)
        opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[name], msg=name)


def _per_tensor_lars(model: nn.Module, grad_seeds: list[int]) -> dict[str, torch.Tensor]:
    """LARS's arithmetic one tensor at a time, in the order of its multi-tensor kernels."""
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    bufs = {name: torch.zeros_like(p) for name, p in params.items()}
    for seed in grad_seeds:
        _set_grads(model, seed)
        for name, p in model.named_parameters():
            w, g = params[name], p.grad
            bufs[name] = bufs[name] * MOMENTUM
            if p.ndim > 1:
                g = g + WD * w
                w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                trust = torch.where((w_norm > 0) & (g_norm > 0), ETA * w_norm / g_norm, 1.0)
                bufs[name] = bufs[name] + g * (trust * LR)
            else:
                bufs[name] = bufs[name] + g * LR
            params[name] = w - bufs[name]
    return params


def test_lars_multi_tensor_update_gives_the_per_tensor_numbers_exactly():
    model = _model()
    want = _per_tensor_lars(_model(), grad_seeds=[1, 2, 3])
    opt = LARS(param_groups(model, WD), lr=LR, momentum=MOMENTUM, weight_decay=WD, eta=ETA)
    for seed in (1, 2, 3):
        _set_grads(model, seed)
        opt.step()
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), want[name]), name


def test_lars_excluded_params_get_plain_sgd_step():
    # zero gradient: excluded tensors must not move (no decay), adapted weights shrink (decay)
    model = _model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = LARS(param_groups(model, 0.1), lr=LR, weight_decay=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        if p.ndim == 1:
            assert torch.equal(p, before[name]), name
        else:
            # g = wd * w, trust = eta * |w| / (wd * |w|), so w -= lr * eta * w
            torch.testing.assert_close(p.detach(), before[name] * (1 - LR * ETA), msg=name)


def test_lars_trust_ratio_falls_back_to_one_for_zero_weights():
    w = nn.Parameter(torch.zeros(3, 2))
    w.grad = torch.full((3, 2), 2.0)
    LARS([w], lr=0.1, weight_decay=1e-6).step()
    torch.testing.assert_close(w.detach(), torch.full((3, 2), -0.2))


def test_lars_state_dict_round_trip_continues_identically():
    a, b = _model(), _model()
    opt_a = LARS(param_groups(a, WD), lr=LR, weight_decay=WD)
    _set_grads(a, 1)
    opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = LARS(param_groups(b, WD), lr=LR, weight_decay=WD)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # a checkpoint, not aliased buffers
    for model, opt in ((a, opt_a), (b, opt_b)):
        _set_grads(model, 2)
        opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_param_groups_split_by_ndim_and_skip_frozen():
    model = _model()
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, 1e-4)
    decay, no_decay = groups
    assert [p.shape for p in decay["params"]] == [(3, 4)]
    assert decay["weight_decay"] == 1e-4 and not decay["lars_exclude"]
    assert [p.shape for p in no_decay["params"]] == [(3,)] * 3
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"]


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_build_optimizer_never_decays_biases_or_norms(name):
    model = _model()
    opt = build_optimizer(model, name, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (p.ndim == 1), n


def test_build_optimizer_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer 'lasr' \\(did you mean 'lars'\\?\\)"):
        build_optimizer(_model(), "lasr", lr=0.1, weight_decay=0.0)


@pytest.mark.parametrize(
    "base, batch, scaling, want",
    [
        (None, 4096, "linear", 4.8),
        (None, 256, "linear", 0.3),
        (None, 4096, "sqrt", 4.8),
        (None, 512, "sqrt", 0.075 * math.sqrt(512)),
        (1.0, 512, "linear", 2.0),
        (0.1, 100, "sqrt", 1.0),
    ],
)
def test_scaled_lr(base, batch, scaling, want):
    assert scaled_lr(base, batch, scaling) == pytest.approx(want)


def test_scaled_lr_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown lr scaling 'sqr' \\(did you mean 'sqrt'\\?\\)"):
        scaled_lr(None, 256, "sqr")
    with pytest.raises(ValueError, match="batch_size"):
        scaled_lr(None, 0, "linear")


def _lrs(warmup: int, total: int, steps: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, warmup, total)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_cosine_shape():
    warmup, total = 10, 50
    lrs = _lrs(warmup, total, total + 3)
    assert lrs[0] == pytest.approx(2.0 / (warmup + 1))
    assert all(a < b for a, b in itertools.pairwise(lrs[: warmup + 1]))
    assert lrs[warmup] == pytest.approx(2.0)
    assert all(a > b for a, b in zip(lrs[warmup : total - 1], lrs[warmup + 1 : total]))
    assert lrs[(warmup + total) // 2] == pytest.approx(1.0)
    assert lrs[total:] == pytest.approx([0.0] * 3)


def test_warmup_cosine_without_warmup_starts_at_peak():
    assert _lrs(0, 4, 5) == pytest.approx(
        [2.0, 2.0 * 0.5 * (1 + math.cos(math.pi / 4)), 1.0, 2.0 * 0.5 * (1 - math.cos(math.pi / 4)), 0.0]
    )


def test_warmup_cosine_resumes_from_state_dict():
    full = _lrs(5, 30, 30)

    def fresh():
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
        return opt, warmup_cosine(opt, 5, 30)

    opt, sched = fresh()
    for _ in range(12):
        opt.step()
        sched.step()
    opt2, sched2 = fresh()
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    sched2.load_state_dict(copy.deepcopy(sched.state_dict()))
    resumed = []
    for _ in range(18):
        resumed.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert resumed == full[12:]


def test_warmup_cosine_rejects_warmup_past_total():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps=10, total_steps=10"):
        warmup_cosine(opt, 10, 10)
