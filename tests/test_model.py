from __future__ import annotations

import pytest
import torch
import two_processes as two
from torch import nn

from ablation.model import ENCODERS, GlobalBatchNorm, build_encoder, build_head, global_batch_norm


@pytest.mark.parametrize(
    "name,batch", [("small_cnn", 8), ("resnet18", 4), pytest.param("resnet50", 2, marks=pytest.mark.slow)]
)
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
    encoder, _dim = build_encoder("small_cnn", width=4)
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


def _bn_net() -> nn.Sequential:
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 2),
    ).double()


def _bn_batch() -> torch.Tensor:
    return torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _bn_step(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Output, parameter gradients and BN running statistics after one training step's forward/backward."""
    out = net(x)
    out.pow(2).mean().backward()
    stats = [
        b
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var)
    ]
    return out.detach(), [p.grad for p in net.parameters()], stats


def _bn_worker(rank: int, init_file: str, out: str) -> None:
    two.join(rank, init_file)
    net = global_batch_norm(_bn_net())
    y, grads, stats = _bn_step(net, _bn_batch()[two.shard(rank)])
    two.rank_mean(grads)  # what DDP does with the gradients
    two.finish(rank, (y, grads, stats), out)


@pytest.mark.slow
def test_global_batch_norm_over_two_processes_equals_batch_norm_over_the_whole_batch(tmp_path):
    parts = two.spawn(_bn_worker, tmp_path)
    y, grads, stats = _bn_step(_bn_net(), _bn_batch())
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), y)
    for got_grads, got_stats in ((p[1], p[2]) for p in parts):
        torch.testing.assert_close(got_grads, grads)
        torch.testing.assert_close(got_stats, stats)


def test_global_batch_norm_keeps_the_parameters_an_optimiser_holds():
    net = _bn_net()
    params = [id(p) for p in net.parameters()]
    converted = global_batch_norm(net)
    assert sum(isinstance(m, GlobalBatchNorm) for m in converted.modules()) == 2
    assert [id(p) for p in converted.parameters()] == params
    x = _bn_batch()
    torch.testing.assert_close(converted(x), _bn_net()(x))  # one process: plain batch norm
