from __future__ import annotations

import io
import math

import pytest
import torch

from ablation.model import build_encoder
from ablation.probe import (
    OnlineHead,
    capture_features,
    extract_features,
    knn_correct,
    knn_probe,
    linear_probe,
    sgd_probe,
)


def blobs(n: int, dim: int, classes: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * spread
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, dim, generator=g), y


def separable(n_train: int, n_test: int, classes: int) -> tuple[torch.Tensor, ...]:
    """Train and test features of well-separated classes, with their labels."""
    train_f, train_y = blobs(n_train, 16, classes, spread=4.0, seed=0)
    test_f, test_y = blobs(n_test, 16, classes, spread=4.0, seed=1)
    return train_f, train_y, test_f, test_y


def test_linear_probe_separates_separable_classes():
    train_f, train_y = blobs(2000, 32, 10, spread=4.0, seed=0)
    test_f, test_y = blobs(500, 32, 10, spread=4.0, seed=1)
    acc = linear_probe(train_f * 7 + 3, train_y, test_f * 7 + 3, test_y, 10)  # scale/offset: standardised
    assert acc["top1"] >= 0.99 and acc["top5"] == 1.0


def test_linear_probe_is_at_chance_on_random_labels():
    g = torch.Generator().manual_seed(0)
    n_test, classes = 2000, 10
    train_f, test_f = torch.randn(1000, 64, generator=g), torch.randn(n_test, 64, generator=g)
    train_y, test_y = torch.randint(0, classes, (1000,), generator=g), torch.randint(0, classes, (n_test,), generator=g)
    acc = linear_probe(train_f, train_y, test_f, test_y, classes)
    for key, p in (("top1", 0.1), ("top5", 0.5)):
        sigma = math.sqrt(p * (1 - p) / n_test)  # binomial std of an accuracy at chance
        assert abs(acc[key] - p) < 5 * sigma, (key, acc[key])


def test_linear_probe_is_deterministic_and_top5_clips_to_classes():
    train_f, train_y = blobs(300, 8, 3, spread=0.5, seed=0)
    test_f, test_y = blobs(100, 8, 3, spread=0.5, seed=1)
    first, again = linear_probe(train_f, train_y, test_f, test_y, 3), linear_probe(train_f, train_y, test_f, test_y, 3)
    assert torch.equal(first.pop("correct"), again.pop("correct")) and first == again
    assert first["top5"] == 1.0 and 0 < first["top1"] < 1  # top-min(5, 3) covers every class
    many_f, many_y = blobs(300, 8, 20, spread=0.5, seed=0)
    acc = linear_probe(many_f, many_y, many_f[:100], many_y[:100], 20)
    assert 0 <= acc["top1"] <= acc["top5"] <= 1


def knn_reference(train_f, train_y, test_f, num_classes, k, t) -> torch.Tensor:
    """One test sample at a time, straight from the definition."""
    preds = []
    for q in test_f:
        sims = torch.stack([torch.dot(q, x) / (q.norm() * x.norm()) for x in train_f])
        order = sorted(range(len(sims)), key=lambda i: -sims[i].item())[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(train_y[i])] += math.exp(sims[i].item() / t)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


@pytest.mark.parametrize("k,t", [(1, 0.1), (7, 0.1), (20, 0.5), (500, 0.07)])
def test_knn_matches_naive_reference(k, t):
    g = torch.Generator().manual_seed(k)
    train_f, test_f = torch.randn(60, 5, generator=g), torch.randn(25, 5, generator=g)
    train_y, test_y = torch.randint(0, 4, (60,), generator=g), torch.randint(0, 4, (25,), generator=g)
    expected = (knn_reference(train_f, train_y, test_f, 4, min(k, 60), t) == test_y).float().mean().item()
    assert knn_probe(train_f, train_y, test_f, test_y, 4, k=k, t=t) == pytest.approx(expected)
    assert knn_probe(train_f, train_y, test_f, test_y, 4, k=k, t=t, chunk_size=4) == pytest.approx(expected)


def test_knn_on_clustered_features():
    train_f, train_y = blobs(500, 16, 5, spread=3.0, seed=0)
    test_f, test_y = blobs(200, 16, 5, spread=3.0, seed=1)
    assert knn_probe(train_f, train_y, test_f, test_y, 5, k=20) >= 0.95


def test_extract_features_is_deterministic_and_restores_modes():
    torch.manual_seed(0)
    encoder, dim = build_encoder("small_cnn", width=4)
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    encoder.train()
    encoder(torch.rand(8, 3, 16, 16))  # move BN running stats away from their init
    frozen_bn = encoder[1].eval()  # a submodule deliberately left in eval mode
    before = {k: v.clone() for k, v in encoder.state_dict().items()}

    f1 = extract_features(encoder, images, batch_size=3)
    f2 = extract_features(encoder, images, batch_size=10)
    assert f1.shape == (10, dim) and f1.dtype == torch.float32
    assert torch.equal(f1, extract_features(encoder, images, batch_size=3))
    torch.testing.assert_close(f1, f2)
    assert encoder.training and not frozen_bn.training
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())  # BN stats untouched
    encoder.eval()
    torch.testing.assert_close(f1, encoder(images.float() / 255))


def colour_coded(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images whose class (0, 1, 2) brightens one colour channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    images = torch.randint(0, 64, (n, 3, 16, 16), generator=g)
    images[torch.arange(n), y] += 160
    return images.to(torch.uint8), y


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), 1, 1, 1, generator=g, device=x.device) < 0.5
    return torch.where(flip, x.flip(3), x)


@pytest.mark.slow
def test_sgd_probe_learns_and_leaves_encoder_frozen():
    torch.manual_seed(0)
    encoder, _ = build_encoder("small_cnn", width=4)
    train_x, train_y = colour_coded(192, seed=0)
    test_x, test_y = colour_coded(96, seed=1)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    acc = sgd_probe(encoder, train_x, train_y, test_x, test_y, 3, random_flip, epochs=20, batch_size=32)
    full_batch = linear_probe(extract_features(encoder, train_x), train_y, extract_features(encoder, test_x), test_y, 3)
    assert acc["top1"] >= 0.9 and acc["top5"] == 1.0
    again = sgd_probe(encoder, train_x, train_y, test_x, test_y, 3, random_flip, epochs=20, batch_size=32)
    assert again["top1"] == acc["top1"] and torch.equal(again["correct"], acc["correct"])  # seeded: repeatable
    assert abs(acc["top1"] - full_batch["top1"]) <= 0.05  # same features, same kind of classifier
    assert acc["correct"].float().mean().item() == pytest.approx(acc["top1"])
    assert encoder.training
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_features_are_float32_under_a_bf16_autocast():
    """A bf16 autocast around a probe changes nothing: features are computed in float32 on every device."""
    torch.manual_seed(0)
    encoder, _ = build_encoder("small_cnn", width=4)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    plain = extract_features(encoder, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = extract_features(encoder, images)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


def test_knn_correct_is_per_image_and_averages_to_the_knn_top1():
    g = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(200, 8, generator=g), torch.randn(50, 8, generator=g)
    train_y, test_y = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (50,), generator=g)
    hits = knn_correct(train_f, train_y, test_f, test_y, 4, k=10)
    assert hits.dtype == torch.bool and hits.shape == (50,)
    assert hits.float().mean().item() == pytest.approx(knn_probe(train_f, train_y, test_f, test_y, 4, k=10))
    assert torch.equal(hits, knn_correct(train_f, train_y, test_f, test_y, 4, k=10, chunk_size=7))


def test_linear_probe_correct_matches_its_top1_and_per_class():
    train_f, train_y, test_f, test_y = separable(100, 40, 6)
    result = linear_probe(train_f, train_y, test_f, test_y, 6)
    assert result["correct"].float().mean().item() == pytest.approx(result["top1"])
    per_class = [result["correct"][test_y == c].float().mean().item() for c in range(6)]
    assert per_class == pytest.approx(result["per_class"])


def test_online_head_learns_draws_nothing_and_resumes_exactly():
    """The online head trains on detached features of training steps, leaves the global RNG where it was (so
    a cell's draws are the same with or without it), and continues bit-exactly from its checkpoint."""
    train_f, train_y, test_f, test_y = separable(200, 100, 4)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    head = OnlineHead(train_f.shape[1], 4, batch_size=50, total_steps=40, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)
    for step in range(20):
        part = slice(step % 4 * 50, step % 4 * 50 + 50)
        head.step(torch.cat([train_f[part], train_f[part]]), train_y[part])  # two views of each image
    buffer = io.BytesIO()
    torch.save(head.checkpoint(), buffer)  # as the cell's checkpoint holds it
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = OnlineHead(train_f.shape[1], 4, batch_size=50, total_steps=40, device=torch.device("cpu"))
    twin.restore(saved)
    for model in (head, twin):
        model.step(train_f[:50], train_y[:50])
    assert head.evaluate(test_f, test_y)["top1"] >= 0.95
    assert torch.equal(head.linear.weight, twin.linear.weight)


def test_capture_features_keeps_training_outputs_only():
    encoder, dim = build_encoder("small_cnn", width=4)
    seen = capture_features(encoder)
    encoder.train()
    encoder(torch.rand(3, 3, 16, 16))
    extract_features(encoder, torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8))  # eval mode: not kept
    assert [tuple(h.shape) for h in seen] == [(3, dim)]
