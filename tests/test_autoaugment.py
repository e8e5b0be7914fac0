"""AutoAugment (ImageNet policy): each step against torchvision on one image at a time, the whole
op against a per-sample replay of its draw, and the statistics of the draws. The registry-wide
contracts (shape, range, replay, p = 0 identity, mask rate) run in test_augment.py."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ablation.augment import REGISTRY
from ablation.augment.autoaugment import KINDS, POLICY, SIGNED, apply_step, magnitude
from ablation.cli import main

NEAREST = TF.InterpolationMode.NEAREST


def images(n: int, size: int = 20, seed: int = 0) -> torch.Tensor:
    """8-bit levels as floats, so posterize / solarize / equalize see exact levels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255


def reference(img: torch.Tensor, kind: str, m: float) -> torch.Tensor:
    """torchvision's AutoAugment operation on one image (its _apply_op, with 8-bit ops on uint8)."""
    if kind == "rotate":
        return TF.rotate(img, m, interpolation=NEAREST)
    if kind == "shear_x":
        return TF.affine(
            img,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=[math.degrees(math.atan(m)), 0.0],
            interpolation=NEAREST,
            center=[0, 0],
        )
    u8 = (img * 255).round().to(torch.uint8)
    eight_bit = {
        "posterize": lambda: TF.posterize(u8, int(m)),
        "solarize": lambda: TF.solarize(u8, m * 255),
        "equalize": lambda: TF.equalize(u8),
    }
    if kind in eight_bit:
        return eight_bit[kind]().float() / 255
    enhance = {"color": TF.adjust_saturation, "contrast": TF.adjust_contrast, "sharpness": TF.adjust_sharpness}
    if kind in enhance:
        return enhance[kind](img, 1 + m)
    return TF.autocontrast(img) if kind == "autocontrast" else TF.invert(img)


def test_each_step_matches_torchvision_per_sample():
    # every kind at two bins and both signs, and "no step" (-1), mixed in one batch
    cases = [(k, b, s) for k in range(len(KINDS)) for b, s in ((8, 1), (3, -1))] + [(-1, None, 1)]
    x = images(len(cases))
    kind = torch.tensor([k for k, _, _ in cases])
    takes_bin = SIGNED + ("posterize", "solarize")
    mags = [
        0.0 if k < 0 else (s if KINDS[k] in SIGNED else 1) * magnitude(KINDS[k], b if KINDS[k] in takes_bin else None)
        for k, b, s in cases
    ]
    got = apply_step(x, kind, torch.tensor(mags))
    for i, (k, _, _) in enumerate(cases):
        want = x[i] if k < 0 else reference(x[i], KINDS[k], mags[i])
        # grayscale weights: kornia 0.299 vs torchvision 0.2989, hence 1e-4 for color / contrast
        torch.testing.assert_close(got[i], want, atol=1e-4, rtol=0, msg=f"{KINDS[k] if k >= 0 else 'none'}")
    assert torch.equal(got[-1], x[-1])


def test_whole_op_equals_a_per_sample_replay_of_its_draw():
    # each step kind is checked against torchvision above; here the batching: sample by sample,
    # the sub-policy it drew, the steps that fired, the signs it drew
    x, op = images(64, seed=1), REGISTRY["autoaugment"](p=1.0)
    params = op.sample(x, torch.Generator().manual_seed(2))
    got = op.apply(x, params)
    for i in range(len(x)):
        want = x[i : i + 1]
        for step, (kind, _, bin_) in enumerate(POLICY[params["policy"][i]]):
            if params["fire"][i, step]:
                sign = int(params["sign"][i, step]) if kind in SIGNED else 1
                want = apply_step(want, torch.tensor([KINDS.index(kind)]), torch.tensor([sign * magnitude(kind, bin_)]))
        assert torch.equal(got[i], want[0]), i


def test_draws_follow_the_policy():
    n = 50_000
    params = REGISTRY["autoaugment"]().sample(torch.zeros(n, 3, 2, 2), torch.Generator().manual_seed(0))
    counts = torch.bincount(params["policy"], minlength=len(POLICY)).float()
    assert (counts - n / len(POLICY)).abs().max() < 5 * math.sqrt(n / len(POLICY))
    prob = torch.tensor([[p for _, p, _ in sub] for sub in POLICY])[params["policy"]]
    fired = params["fire"].float()
    assert (fired.mean(0) - prob.mean(0)).abs().max() < 5 * math.sqrt(0.25 / n)
    assert not params["fire"][prob == 0.0].any() and params["fire"][prob == 1.0].all()
    assert set(params["sign"].unique().tolist()) == {-1, 1}
    assert abs(params["sign"].float().mean().item()) < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize("bin_, bits", [(8, 4), (7, 5), (6, 5), (5, 6)])
def test_posterize_bits_follow_torchvision(bin_, bits):
    assert magnitude("posterize", bin_) == bits


def test_ablate_augs_lists_autoaugment(capsys):
    assert main(["augs"]) == 0
    assert any(line.startswith("autoaugment") for line in capsys.readouterr().out.splitlines())
