"""AutoAugment's ImageNet policy as one batched op: every sample draws its own sub-policy.

SimCLR's Table 1 sets colour distortion beside AutoAugment (Cubuk et al., 2019), a policy searched
with supervised learning. The policy is 25 sub-policies of two steps (operation, probability,
magnitude bin of 10), as in torchvision's ``AutoAugmentPolicy.IMAGENET``, with torchvision's
magnitudes and conventions: signed magnitudes get a random sign, rotate and shear use nearest
sampling and black fill, solarize thresholds on 8-bit levels.

Batched without a loop over samples: each step computes every operation kind once on the whole
batch and keeps, per sample, the one its sub-policy names (a loop over the 10 kinds; rotate and
shear share one ``grid_sample``). A step that does not fire leaves its samples exact.
"""

from __future__ import annotations

import functools
import math

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import _per_sample
from .registry import Augmentation, Params, register

POLICY = (
    (("posterize", 0.4, 8), ("rotate", 0.6, 9)),
    (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
    (("equalize", 0.8, None), ("equalize", 0.6, None)),
    (("posterize", 0.6, 7), ("posterize", 0.6, 6)),
    (("equalize", 0.4, None), ("solarize", 0.2, 4)),
    (("equalize", 0.4, None), ("rotate", 0.8, 8)),
    (("solarize", 0.6, 3), ("equalize", 0.6, None)),
    (("posterize", 0.8, 5), ("equalize", 1.0, None)),
    (("rotate", 0.2, 3), ("solarize", 0.6, 8)),
    (("equalize", 0.6, None), ("posterize", 0.4, 6)),
    (("rotate", 0.8, 8), ("color", 0.4, 0)),
    (("rotate", 0.4, 9), ("equalize", 0.6, None)),
    (("equalize", 0.0, None), ("equalize", 0.8, None)),
    (("invert", 0.6, None), ("equalize", 1.0, None)),
    (("color", 0.6, 4), ("contrast", 1.0, 8)),
    (("rotate", 0.8, 8), ("color", 1.0, 2)),
    (("color", 0.8, 8), ("solarize", 0.8, 7)),
    (("sharpness", 0.4, 7), ("invert", 0.6, None)),
    (("shear_x", 0.6, 5), ("equalize", 1.0, None)),
    (("color", 0.4, 0), ("equalize", 0.6, None)),
    (("equalize", 0.4, None), ("solarize", 0.2, 4)),
    (("solarize", 0.6, 5), ("autocontrast", 0.6, None)),
    (("invert", 0.6, None), ("equalize", 1.0, None)),
    (("color", 0.6, 4), ("contrast", 1.0, 8)),
    (("equalize", 0.8, None), ("equalize", 0.6, None)),
)
BINS = 10
# Magnitude of bin b (torchvision's augmentation space): the largest value times b / 9.
LARGEST = {"rotate": 30.0, "shear_x": 0.3, "color": 0.9, "contrast": 0.9, "sharpness": 0.9}
SIGNED = tuple(LARGEST)
KINDS = (
    "rotate",
    "shear_x",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
    "color",
    "contrast",
    "sharpness",
    "invert",
)
GEOMETRIC = ("rotate", "shear_x")


def magnitude(kind: str, bin_: int | None) -> float:
    """The unsigned magnitude of a step: degrees (rotate), shear factor, enhance amount (the factor
    is 1 +- it), kept bits (posterize), threshold in [0, 1] (solarize); 0 when it takes none."""
    if bin_ is None:
        return 0.0
    if kind == "posterize":
        return float(8 - round(bin_ / ((BINS - 1) / 4)))
    if kind == "solarize":
        return 1.0 - bin_ / (BINS - 1)
    return LARGEST[kind] * bin_ / (BINS - 1)


@functools.lru_cache(maxsize=8)
def _tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(kind index, probability, magnitude) per (sub-policy, step), and whether each kind is signed."""
    kind = torch.tensor([[KINDS.index(k) for k, _, _ in sub] for sub in POLICY], device=device)
    prob = torch.tensor([[p for _, p, _ in sub] for sub in POLICY], device=device)
    mag = torch.tensor([[magnitude(k, b) for k, _, b in sub] for sub in POLICY], device=device)
    signed = torch.tensor([k in SIGNED for k in KINDS], device=device)
    return kind, prob, mag, signed


def _affine(x: Tensor, kind: Tensor, mag: Tensor) -> Tensor:
    """Rotate (degrees, counter-clockwise about the centre) or shear x (x_in = x + m * y from the top
    edge), each sample by its own step, in one nearest-neighbour grid_sample with black fill."""
    _, _, h, w = x.shape
    angle = torch.where(kind == KINDS.index("rotate"), mag, 0.0) * (math.pi / 180)
    shear = torch.where(kind == KINDS.index("shear_x"), mag, 0.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # normalised coordinates (align_corners=False): u = x / (w / 2), v = y / (h / 2) about the centre
    theta = torch.stack(
        [
            torch.stack([cos, shear * (h / w) - sin * (h / w), shear * (h / w)], 1),
            torch.stack([sin * (w / h), cos, torch.zeros_like(cos)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL's ImageEnhance: degenerate + factor * (x - degenerate), clipped (factor 1 keeps x)."""
    return (degenerate + _per_sample(factor) * (x - degenerate)).clamp(0, 1)


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits`` bits of each 8-bit level (nearest level of x), per sample."""
    step = _per_sample(torch.exp2(8 - bits.round().clamp(0, 8)))
    return torch.floor(torch.round(x * 255) / step) * step / 255


_SMOOTH = (1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0)  # PIL's SMOOTH filter, weights / 13


@functools.lru_cache(maxsize=8)
def _smooth_kernel(device: torch.device, dtype: torch.dtype, channels: int) -> Tensor:
    """Made once per device: a host-to-device copy in every step would wait for the device."""
    return torch.tensor(_SMOOTH, dtype=dtype).div(13).view(1, 1, 3, 3).expand(channels, 1, 3, 3).to(device)


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """PIL's Sharpness: blend with the smoothed image, whose one-pixel border is the image itself."""
    c = x.shape[1]
    kernel = _smooth_kernel(x.device, x.dtype, c)
    smooth = F.pad(F.conv2d(x, kernel, groups=c), (1, 1, 1, 1))
    border = torch.ones_like(smooth[:1, :1])
    border[..., 1:-1, 1:-1] = 0
    return _blend(x, torch.lerp(smooth, x, border), factor)


def _autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel to [0, 1]; a flat channel is left as it is."""
    low, high = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, 1.0, 1.0 / (high - low).masked_fill(flat, 1.0))
    return ((x - torch.where(flat, 0.0, low)) * scale).clamp(0, 1)


def _colour_ops(x: Tensor, mag: Tensor) -> dict[str, Tensor]:
    """Every non-geometric kind applied to the whole batch with each sample's magnitude."""
    gray = kornia.color.rgb_to_grayscale(x)
    factor = 1.0 + mag
    return {
        "posterize": _posterize(x, mag),
        "solarize": torch.where(x >= _per_sample(mag), 1.0 - x, x),
        "autocontrast": _autocontrast(x),
        "equalize": kornia.enhance.equalize(x),
        "color": _blend(x, gray, factor),
        "contrast": _blend(x, gray.mean((-3, -2, -1), keepdim=True), factor),
        "sharpness": _sharpness(x, factor),
        "invert": 1.0 - x,
    }


def apply_step(x: Tensor, kind: Tensor, mag: Tensor) -> Tensor:
    """One policy step: sample i gets KINDS[kind[i]] with signed magnitude mag[i]; kind -1 keeps it."""
    geometric = (kind == KINDS.index(GEOMETRIC[0])) | (kind == KINDS.index(GEOMETRIC[1]))
    out = torch.where(_per_sample(geometric), _affine(x, kind, mag), x)
    for name, y in _colour_ops(x, mag).items():
        out = torch.where(_per_sample(kind == KINDS.index(name)), y, out)
    return out


@register
class AutoAugment(Augmentation):
    name = "autoaugment"
    doc = (
        "AutoAugment's ImageNet policy (torchvision's): per sample one of 25 two-step sub-policies, each "
        "step fired with its probability, signed magnitudes with a random sign"
    )

    def draw(self, x: Tensor, generator: torch.Generator | None) -> Params:
        """policy: sub-policy index; fire: (B, 2) whether each step runs; sign: (B, 2) of +-1."""
        _, prob, _, _ = _tables(x.device)
        b = x.shape[0]
        policy = torch.randint(len(POLICY), (b,), device=x.device, generator=generator)
        fire = torch.rand(b, 2, device=x.device, generator=generator) < prob[policy]
        sign = torch.randint(0, 2, (b, 2), device=x.device, generator=generator) * 2 - 1
        return {"policy": policy, "fire": fire, "sign": sign}

    def transform(self, x: Tensor, params: Params) -> Tensor:
        kinds, _, mags, signed = _tables(x.device)
        for step in range(2):
            kind = torch.where(params["fire"][:, step], kinds[params["policy"], step], -1)
            sign = torch.where(signed[kind.clamp_min(0)], params["sign"][:, step], 1)
            x = apply_step(x, kind, (mags[params["policy"], step] * sign).to(x.dtype))
        return x
