"""Encoders (a CPU-fast small CNN, CIFAR-stem ResNets), projection heads and global batch norm; the
training methods (ablation/methods) assemble their networks from them.

The representation the probes evaluate is the encoder output h (paper Section 4.2: h beats z).
"""

from __future__ import annotations

import itertools
from typing import TypeVar

import torch
import torchvision
from torch import nn

from . import dist
from .errors import choices_error
from .names import ENCODERS, HEADS

SMALL_CNN_WIDTH = 16
M = TypeVar("M", bound=nn.Module)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def small_cnn(width: int = SMALL_CNN_WIDTH, cifar_stem: bool = True) -> tuple[nn.Sequential, int]:
    """Four stride-2 Conv-BN-ReLU blocks (width, 2w, 4w, 8w) and global average pooling.

    The stride-2 first conv is what makes it cheap: at 32x32 the first block runs at 16x16, about 4x
    the throughput of a stride-1 first block, and more accuracy per CPU second (measured on CIFAR-10:
    width 16 beat a stride-1 stem and widths 24 and 32 at equal compute). h has 8 x width dimensions.
    Without the CIFAR stem a 3x3 stride-2 max-pool follows the first block (larger images, ResNet style).
    """
    widths = [width * 2**i for i in range(4)]
    layers = _conv_bn_relu(3, widths[0], 2)
    if not cifar_stem:
        layers.append(nn.MaxPool2d(3, 2, 1))
    for c_in, c_out in itertools.pairwise(widths):
        layers += _conv_bn_relu(c_in, c_out, 2)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), widths[-1]


def resnet(name: str, cifar_stem: bool = True) -> tuple[nn.Module, int]:
    """torchvision ResNet (random init) without its classifier; the CIFAR stem is 3x3 stride 1, no max-pool."""
    net = getattr(torchvision.models, name)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    return net, dim


def build_encoder(name: str, cifar_stem: bool = True, width: int = SMALL_CNN_WIDTH) -> tuple[nn.Module, int]:
    """Return (encoder mapping (B, 3, H, W) floats to h (B, D), D). ``width`` sizes small_cnn only;
    the ResNets keep torchvision's widths."""
    if name == "small_cnn":
        return small_cnn(width, cifar_stem)
    if name in ENCODERS:
        return resnet(name, cifar_stem)
    raise choices_error("encoder", name, ENCODERS)


def build_head(
    kind: str, in_dim: int, hidden_dim: int | None, out_dim: int, layers: int = 2, out_bn: bool = False
) -> nn.Module:
    """Projection head g(h) -> z; the returned module carries its output size as ``.out_dim``.

    "none": identity (z = h); "linear": one Linear; "nonlinear": ``layers`` Linear layers with
    BatchNorm + ReLU between them (paper default: 2 layers, ReLU, to 128-d), ``hidden_dim`` wide (None:
    ``in_dim``, the reference code's choice). ``out_bn`` adds a batch norm after the last Linear whose bias
    stays 0 (the reference code's output layer: Linear without bias, BN with scale and without centre).
    """
    if kind == "none":
        head, head_out = nn.Identity(), in_dim
    elif kind == "linear":
        head, head_out = nn.Linear(in_dim, out_dim), out_dim
    elif kind == "nonlinear":
        if layers < 2:
            raise ValueError(f"nonlinear head needs layers >= 2, got {layers}; use kind 'linear' for one layer")
        hidden_dim = hidden_dim or in_dim
        dims = [in_dim] + [hidden_dim] * (layers - 1)
        hidden = [
            m
            for a, b in itertools.pairwise(dims)
            for m in (nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True))
        ]
        last = (
            [nn.Linear(hidden_dim, out_dim, bias=False), _scale_only_bn(out_dim)]
            if out_bn
            else [nn.Linear(hidden_dim, out_dim)]
        )
        head, head_out = nn.Sequential(*hidden, *last), out_dim
    else:
        raise choices_error("head", kind, HEADS)
    head.out_dim = head_out
    return head


def _scale_only_bn(dim: int) -> nn.BatchNorm1d:
    """Batch norm with a learned scale and no shift (its bias frozen at 0, so no optimiser moves it)."""
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    return bn


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all processes (the
    paper's global BN), on any device (torch.nn.SyncBatchNorm accepts GPU tensors only).

    One differentiable all-reduce of (sum, sum of squares, count) per layer and step; its backward
    sums the gradients of every rank's loss, so DDP's mean over ranks gives the gradients of one
    process on the whole batch. Outside training, or with one process, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.active()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in fp32 at least
        count = torch.full((1,), xf.numel() / xf.shape[1], device=x.device)
        total = dist.sum_with_grad(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c, n = xf.shape[1], total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def global_batch_norm(module: M) -> M:
    """Every BatchNorm layer of `module` made a GlobalBatchNorm (the same parameters and buffers, so
    an optimiser built before still holds them), on every device: torch's SyncBatchNorm makes the
    host wait for the GPU in every layer (it indexes with a boolean mask) and breaks a compiled graph
    there; GlobalBatchNorm is one all-reduce per layer, no wait."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            bn = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=child.running_mean.device if child.running_mean is not None else None,
            )
            if child.affine:
                bn.weight, bn.bias = child.weight, child.bias
            bn.running_mean, bn.running_var = child.running_mean, child.running_var
            bn.num_batches_tracked = child.num_batches_tracked
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            global_batch_norm(child)
    return module
