from __future__ import annotations

import pytest
import torch
from torch import nn

from ablation.model import ENCODERS, build_encoder, build_head


@pytest.mark.parametrize("name,batch", [("small_cnn", 8), ("resnet18", 4), ("resnet50", 2)])
def test_encoders_map_images_to_flat_features(name, batch):
    torch.manual_seed(0)
    encoder, dim = build_encoder(name, cifar_stem=True)
    h = encoder(torch.rand(batch, 3, 32, 32))
    assert h.shape == (batch, dim)
    assert torch.isfinite(h).all()


def test_feature_dims():
    assert build_encoder("resnet18")[1] == 512
    assert build_encoder("resnet50")[1] == 2048
    assert build_encoder("small_cnn", width=8)[1] == 64


def test_small_cnn_width_scales_channels_and_stem_option_downsamples():
    cifar, dim = build_encoder("small_cnn", cifar_stem=True, width=4)
    imagenet, _ = build_encoder("small_cnn", cifar_stem=False, width=4)
    convs = [m for m in cifar.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32] and dim == 32
    assert sum(isinstance(m, nn.MaxPool2d) for m in cifar.modules()) == 0
    assert sum(isinstance(m, nn.MaxPool2d) for m in imagenet.modules()) == 1
    x = torch.rand(2, 3, 64, 64)
    assert cifar(x).shape == imagenet(x).shape == (2, 32)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_cifar_stem_is_3x3_stride_1_without_maxpool(name):
    cifar, _ = build_encoder(name, cifar_stem=True)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and cifar.conv1.bias is None
    assert isinstance(cifar.maxpool, nn.Identity)
    assert isinstance(cifar.fc, nn.Identity)
    imagenet, _ = build_encoder(name, cifar_stem=False)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_small_cnn_trains_in_channels_last():
    encoder, dim = build_encoder("small_cnn", width=4)
    encoder = encoder.to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    encoder(x).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_unknown_encoder_names_choices():
    with pytest.raises(ValueError, match=r"resnet18.*choose from: small_cnn, resnet18, resnet50"):
        build_encoder("resnet19")
    assert ENCODERS == ("small_cnn", "resnet18", "resnet50")


@pytest.mark.parametrize("kind,layers,expected_linears", [("linear", 1, 1), ("nonlinear", 2, 2), ("nonlinear", 3, 3)])
def test_head_kinds_and_dims(kind, layers, expected_linears):
    head = build_head(kind, in_dim=32, hidden_dim=16, out_dim=8, layers=layers)
    assert head(torch.rand(5, 32)).shape == (5, 8) and head.out_dim == 8
    assert sum(isinstance(m, nn.Linear) for m in head.modules()) == expected_linears
    assert sum(isinstance(m, nn.ReLU) for m in head.modules()) == expected_linears - 1
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == expected_linears - 1


def test_nonlinear_head_hidden_width():
    head = build_head("nonlinear", in_dim=32, hidden_dim=16, out_dim=8, layers=3)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 16), (16, 16), (16, 8)]


def test_no_head_is_identity():
    head = build_head("none", in_dim=32, hidden_dim=16, out_dim=8, layers=2)
    x = torch.rand(3, 32)
    assert isinstance(head, nn.Identity) and head.out_dim == 32 and torch.equal(head(x), x)


def test_bad_heads():
    with pytest.raises(ValueError, match=r"'nonlinar' \(did you mean 'nonlinear'\?\).*none, linear, nonlinear"):
        build_head("nonlinar", 4, 4, 4, 2)
    with pytest.raises(ValueError, match="layers >= 2"):
        build_head("nonlinear", 4, 4, 4, 1)

