"""Encoders (a CPU-fast small CNN, CIFAR-stem ResNets) and projection heads.

The representation the probes evaluate is the encoder output h (paper Section 4.2: h beats z).
"""
from __future__ import annotations

import torchvision
from torch import nn

from .errors import choices_error

ENCODERS = ("small_cnn", "resnet18", "resnet50")
HEADS = ("none", "linear", "nonlinear")
SMALL_CNN_WIDTH = 16


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
    for c_in, c_out in zip(widths, widths[1:]):
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


def build_head(kind: str, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2) -> nn.Module:
    """Projection head g(h) -> z; the returned module carries its output size as ``.out_dim``.

    "none": identity (z = h); "linear": one Linear; "nonlinear": ``layers`` Linear layers with
    BatchNorm + ReLU between them (paper default: 2 layers, ReLU, to 128-d).
    """
    if kind == "none":
        head, head_out = nn.Identity(), in_dim
    elif kind == "linear":
        head, head_out = nn.Linear(in_dim, out_dim), out_dim
    elif kind == "nonlinear":
        if layers < 2:
            raise ValueError(f"nonlinear head needs layers >= 2, got {layers}; use kind 'linear' for one layer")
        dims = [in_dim] + [hidden_dim] * (layers - 1)
        hidden = [m for a, b in zip(dims, dims[1:])
                  for m in (nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True))]
        head, head_out = nn.Sequential(*hidden, nn.Linear(hidden_dim, out_dim)), out_dim
    else:
        raise choices_error("head", kind, HEADS)
    head.out_dim = head_out
    return head

