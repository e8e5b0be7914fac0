"""Optimisers and learning-rate schedules of SimCLR: LARS, lr scaling with batch size, warmup + cosine.

Follows the official SimCLR code (google-research/simclr, lars_optimizer.py) and paper Section 2.3 and
Appendix B.1. Biases and normalisation parameters (every tensor with ndim <= 1) get no weight decay
and no LARS trust-ratio adaptation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ablation.errors import choices_error
from ablation.names import LR_SCALINGS, OPTIMIZERS

BASE_LR = {"linear": 0.3, "sqrt": 0.075}  # names.LR_SCALINGS -> default base lr (paper Sec. 2.3, App. B.1)


class LARS(Optimizer):
    """LARS with "classic" momentum as in the official SimCLR code.

    Per tensor: g = grad + wd * w. Then trust = eta * ||w|| / ||g||, or 1 when either norm is 0.
    Then v = momentum * v + lr * trust * g, and w -= v. The lr sits inside the momentum buffer.
    Groups with ``lars_exclude=True`` skip the weight decay and use trust = 1: plain momentum SGD.
    Each group is updated with multi-tensor (``torch._foreach_*``) kernels, a few launches per group
    on a GPU instead of several per tensor, with the same arithmetic as one tensor at a time; no
    step reads a value back to the host.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        eta: float = 0.001,
    ) -> None:
        for key, value in {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta}.items():
            if value < 0:
                raise ValueError(f"LARS {key} must be >= 0; got {value}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "lars_exclude": False}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(params, group)
        return loss

    def _update(self, params: list[Tensor], group: dict) -> None:
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("LARS does not support sparse gradients")
        grads = [p.grad for p in params]
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_mul_(bufs, group["momentum"])
        if group["lars_exclude"]:
            torch._foreach_add_(bufs, torch._foreach_mul(grads, group["lr"]))
        else:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            w_norm, g_norm = torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(grads))
            trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, 1.0)
            # v += (lr trust) g with one 0-d rate per tensor: addcmul's multi-tensor kernel takes such a
            # list (a multiply by a list of 0-d tensors would launch one kernel per tensor)
            torch._foreach_addcmul_(bufs, list((trust * group["lr"]).unbind()), grads)
        torch._foreach_sub_(params, bufs)


def param_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, bias_lr_scale: float = 1.0
) -> list[dict]:
    """Two groups: weights (decay + LARS adaptation), and biases/norm params (ndim <= 1: neither). With ``lr``,
    each group carries its rate: ``lr`` for weights, ``lr * bias_lr_scale`` for the rest (Barlow Twins'
    authors give them 0.0048 / 0.2 of the weights' rate); without, the optimiser's default applies to both.

    Frozen parameters are left out. Empty groups are dropped.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    rates = ({"lr": lr}, {"lr": lr * bias_lr_scale}) if lr is not None else ({}, {})
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lars_exclude": False, **rates[0]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lars_exclude": True, **rates[1]},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9, bias_lr_scale: float = 1.0
) -> Optimizer:
    """LARS, momentum SGD or AdamW over ``param_groups(model, weight_decay, lr, bias_lr_scale)``. AdamW ignores
    ``momentum``.

    On a GPU, SGD and AdamW use torch's fused kernels (one launch for all tensors, step counts on the
    device); elsewhere torch's defaults, whose results do not change.
    """
    groups = param_groups(model, weight_decay, lr, bias_lr_scale)
    fused = {"fused": True} if all(p.is_cuda for g in groups for p in g["params"]) else {}
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fused)
    raise choices_error("optimizer", name, OPTIMIZERS)


def scaled_lr(base_lr: float | None, batch_size: int, scaling: str) -> float:
    """The peak lr: "linear" gives base * B / 256 (base 0.3); "sqrt" gives base * sqrt(B) (base 0.075).

    ``base_lr=None`` uses the paper's base for that scaling. At B = 4096 both defaults give 4.8.
    """
    if scaling not in LR_SCALINGS:
        raise choices_error("lr scaling", scaling, LR_SCALINGS)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0; got {batch_size}")
    base = BASE_LR[scaling] if base_lr is None else base_lr
    return base * batch_size / 256 if scaling == "linear" else base * math.sqrt(batch_size)


class WarmupCosine:
    """lr multiplier at step s. Linear warmup (s + 1) / (W + 1) for s <= W, so the peak 1 falls at s = W.

    Then 0.5 * (1 + cos(pi * (s - W) / (T - W))) down to 0 at s = T, and 0 after T. A callable
    object, not a lambda, so LambdaLR.state_dict records W and T and the scheduler pickles.
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"need 0 <= warmup_steps < total_steps; got warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step <= self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """Call ``.step()`` once per optimiser step. Resume by loading the optimizer's and this scheduler's state_dicts."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))
