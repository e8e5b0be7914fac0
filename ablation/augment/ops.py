"""The registered augmentations: batched, per-sample random, no Python loop over samples.

Paper definitions (SimCLR Appendix A and the official TF code) for crop, flip, colour and blur.
Cutout, sobel, noise, rotate, solarize, equalize and posterize were never published by the
paper; their choices are stated in each op's ``doc``.
"""

from __future__ import annotations

import functools
import math
from functools import cached_property
from typing import ClassVar

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Augmentation, Params, apply_all, param, register, sample_all


def _uniform(x: Tensor, low: float, high: float, generator: torch.Generator | None, *shape: int) -> Tensor:
    """Uniform draws in [low, high) of shape (B, *shape) on the batch's device."""
    u = torch.rand(x.shape[0], *shape, device=x.device, generator=generator)
    return low + (high - low) * u


def _per_sample(v: Tensor) -> Tensor:
    """Broadcast a (B,) tensor over (B, C, H, W)."""
    return v.view(-1, 1, 1, 1)


def _box_start(x: Tensor, length: Tensor, size: int, generator: torch.Generator | None) -> Tensor:
    """Integer start of a box of integer ``length`` placed uniformly inside ``size`` pixels."""
    return torch.floor(_uniform(x, 0.0, 1.0, generator) * (size - length + 1))


@register
class Identity(Augmentation):
    name = "identity"
    doc = "leaves the image unchanged (the untouched branch of the paper's asymmetric ablation)"

    @property
    def is_noop(self) -> bool:
        return True


@register
class Crop(Augmentation):
    name = "crop"
    doc = (
        "random resized crop: area U[scale_min, scale_max], log-uniform aspect ratio, integer box "
        "redrawn until it fits (10 tries, then the centre crop, as torchvision), bilinear resize back "
        "to the input size; flip=True adds a p=0.5 flip"
    )
    scale_min: float = param(0.08, 0.0, 1.0, "smallest crop area, as a fraction of the image")
    scale_max: float = param(1.0, 0.0, 1.0, "largest crop area, as a fraction of the image")
    ratio_min: float = param(3 / 4, 0.1, 10.0, "smallest aspect ratio (width / height)")
    ratio_max: float = param(4 / 3, 0.1, 10.0, "largest aspect ratio (width / height)")
    flip: bool = param(True, doc="also flip horizontally with p=0.5 (the paper's crop recipe)")

    tries: ClassVar[int] = 10  # torchvision's RandomResizedCrop.get_params

    def draw(self, x: Tensor, generator: torch.Generator | None) -> Params:
        _, _, h, w = x.shape
        b = x.shape[0]
        u_area, u_ratio = (_uniform(x, 0.0, 1.0, generator, self.tries) for _ in range(2))
        size = fitting_sides(
            u_area,
            u_ratio,
            torch.full((b,), float(h), device=x.device),
            torch.full((b,), float(w), device=x.device),
            (self.scale_min, self.scale_max),
            (self.ratio_min, self.ratio_max),
        )
        at_x, at_y = (_uniform(x, 0.0, 1.0, generator) for _ in range(2))
        box = placed_box(at_x, at_y, size, h, w)
        flip = _uniform(x, 0.0, 1.0, generator) < (0.5 if self.flip else 0.0)
        return {"box": box, "flip": flip}

    def transform(self, x: Tensor, params: Params) -> Tensor:
        return resized_crop(x, params["box"], params["flip"], (x.shape[-2], x.shape[-1]))


def fitting_sides(
    u_area: Tensor, u_ratio: Tensor, h: Tensor, w: Tensor, scale: tuple[float, float], ratio: tuple[float, float]
) -> Tensor:
    """(B, 2) integer box sides (width, height) on images of h x w pixels ((B,) float tensors):
    torchvision's retry loop, every try at once. This, `placed_box` and `resized_crop` are the one crop
    geometry of the `crop` op and of the crops drawn at the source of an image folder (data.source_crop).

    Try k of a sample takes area U[scale] (u_area[:, k]) and log-uniform aspect ratio (u_ratio[:, k]),
    uniforms (B, tries) in [0, 1); the first try whose rounded box fits is kept, and a sample with none
    takes the centre crop with the aspect ratio clamped to ``ratio``. Clipping a box that does not fit
    instead (the obvious vectorisation) biases crops towards the whole image: over 20,000 draws at
    32 px it gave mean area 0.536 against the reference's 0.488.
    """
    hc, wc = h[:, None], w[:, None]
    area = (scale[0] + (scale[1] - scale[0]) * u_area) * (hc * wc)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u_ratio)
    bw, bh = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (bw >= 1) & (bw <= wc) & (bh >= 1) & (bh <= hc)
    first = fits.int().argmax(1, keepdim=True)  # index of the first fitting try (0 if none fits)
    chosen = torch.cat([bw.gather(1, first), bh.gather(1, first)], 1)
    return torch.where(fits.any(1, keepdim=True), chosen, _fallback_sides(h, w, ratio).to(chosen))


def _fallback_sides(h: Tensor, w: Tensor, ratio: tuple[float, float]) -> Tensor:
    """(B, 2) torchvision's fallback: the whole image, or its centre at the nearest allowed aspect
    ratio (in float64, rounding half to even as Python's round)."""
    h, w = h.double(), w.double()
    fb_w = torch.where(w / h <= ratio[1], w, torch.round(h * ratio[1]))
    fb_h = torch.where(w / h >= ratio[0], h, torch.round(w / ratio[0]))
    return torch.stack([fb_w, fb_h], 1)


def placed_box(at_x: Tensor, at_y: Tensor, sides: Tensor, h: int | Tensor, w: int | Tensor) -> Tensor:
    """(B, 4) boxes (x0, y0, width, height): the integer ``sides`` (B, 2) placed inside h x w pixels at
    the uniform positions ``at_x``, ``at_y`` in [0, 1) (every integer start equally likely)."""
    bw, bh = sides.unbind(1)
    return torch.stack([torch.floor(at_x * (w - bw + 1)), torch.floor(at_y * (h - bh + 1)), bw, bh], 1)


def resized_crop(x: Tensor, box: Tensor, flip: Tensor, out: tuple[int, int]) -> Tensor:
    """Each float image of x (B, C, H, W) cropped to its box (B, 4: x0, y0, width, height), flipped
    horizontally where ``flip``, resized bilinearly to ``out`` (height, width): crop, flip and resize
    in one resample."""
    b, _, h, w = x.shape
    gx = source_grid(box[:, 0], box[:, 2], w, out[1])
    gx = torch.where(flip[:, None], gx.flip(1), gx)
    gy = source_grid(box[:, 1], box[:, 3], h, out[0])
    grid = torch.stack([gx[:, None, :].expand(b, *out), gy[:, :, None].expand(b, *out)], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def source_grid(start: Tensor, length: Tensor, size: int, out: int) -> Tensor:
    """Normalised sample positions (B, out) that resize each box [start, start+length) of ``size``
    pixels to ``out``.

    Same sampling as a bilinear ``interpolate`` of the cropped box (half-pixel centres, clamped to
    the box), so one ``grid_sample`` over the batch equals a per-sample crop-then-resize.
    """
    centres = torch.arange(out, device=start.device, dtype=start.dtype) + 0.5
    src = start[:, None] + centres * (length / out)[:, None] - 0.5
    src = torch.minimum(torch.maximum(src, start[:, None]), (start + length - 1)[:, None])
    return (2 * src + 1) / size - 1


@register
class Flip(Augmentation):
    name = "flip"
    doc = "horizontal flip"
    p: float = param(0.5, 0.0, 1.0, "probability of flipping, drawn per sample")

    def transform(self, x: Tensor, params: Params) -> Tensor:
        return x.flip(-1)


# Jitter runs any order of its 4 ops in 5 passes: saturation/hue (even) and brightness/contrast
# (odd) slots; saturation and hue that follow each other share a pass (they commute in HSV).
_SLOTS = 5


def _brightness_contrast_(x: Tensor, scale: Tensor, mean_weight: Tensor) -> Tensor:
    """In place: clip(scale * x + mean_weight * channel_mean(x)), multiplicative brightness
    (mean_weight=0) or tf.image.adjust_contrast (mean_weight = 1 - scale); (1, 0) leaves x exact."""
    shift = x.mean((-2, -1), keepdim=True).mul_(_per_sample(mean_weight))
    return x.mul_(_per_sample(scale)).add_(shift).clamp_(0, 1)


def _saturation_hue(x: Tensor, saturation: Tensor, hue: Tensor, out: Tensor | None = None) -> Tensor:
    """Scale HSV saturation by ``saturation`` and rotate HSV hue by ``hue`` turns, per sample; into
    ``out`` (a spare tensor shaped as x, not x itself) when given.

    The same maths as kornia/tf ``adjust_saturation`` and ``adjust_hue`` (which commute), done
    directly in RGB with few temporaries: value (the max channel) is kept, chroma becomes
    min(chroma * saturation, value), and channel n in (5, 3, 1) for (R, G, B) is
    value - chroma * clamp(2 - d, 0, 1), d = ||n - 2 + sextant - 3| - 3| the distance from
    n - 2 + sextant to a multiple of 6. Selections use lerp with 0/1 weights, exact at both ends
    and much faster than where on CPU.
    """
    r, g, b = x.unbind(1)
    top = x.amax(1)
    chroma = x.amin(1).neg_().add_(top)
    sextant = (r - g).add_(chroma, alpha=4)  # the case where blue is the max channel
    case, is_max = (b - r).add_(chroma, alpha=2), (g - top).sign_().add_(1)  # 1 where max, else 0
    sextant.lerp_(case, is_max)
    torch.sub(r, top, out=is_max).sign_().add_(1)
    sextant.lerp_(torch.sub(g, b, out=case), is_max)  # ties pick R, then G, as kornia
    # chroma 0 (grey): the hue is irrelevant and only needs to stay finite
    sextant.div_(torch.clamp_min(chroma, 1e-12, out=case)).add_(_per_sample(6 * hue)[:, 0]).remainder_(6)
    new_chroma = torch.minimum(chroma.mul_(_per_sample(saturation)[:, 0]), top, out=chroma).unsqueeze(1)
    offsets = torch.arange(0.0, -5.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # n - 5
    ramp = torch.add(sextant.unsqueeze(1), offsets, out=out).abs_().sub_(3).abs_()
    ramp.neg_().add_(2).clamp_(0, 1)
    return ramp.mul_(new_chroma).neg_().add_(top.unsqueeze(1))


def _jitter_plan(order: Tensor, factors: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per sample and slot: (scale, mean_weight) for linear slots, (saturation, hue, on) for HSV
    slots, placing each sample's ops in its order at the earliest slot of their kind."""
    b = order.shape[0]
    ones, zeros = factors.new_ones(b, _SLOTS), factors.new_zeros(b, _SLOTS)
    scale, weight, saturation, hue = ones, zeros, ones, zeros
    on = torch.zeros(b, _SLOTS, dtype=torch.bool, device=order.device)
    slot = torch.full((b,), -1, dtype=torch.long, device=order.device)
    prev_hsv = torch.zeros(b, dtype=torch.bool, device=order.device)
    columns = torch.arange(_SLOTS, device=order.device)
    for pos in range(4):
        op = order[:, pos]
        hsv = op >= 2
        slot = slot + torch.where(hsv, 1 - prev_hsv.long(), 1 + (~prev_hsv).long())
        here = columns == slot[:, None]
        f = factors.gather(1, op[:, None])
        scale = torch.where(here & ~hsv[:, None], f, scale)
        weight = torch.where(here & (op == 1)[:, None], 1 - f, weight)
        saturation = torch.where(here & (op == 2)[:, None], f, saturation)
        hue = torch.where(here & (op == 3)[:, None], f, hue)
        on = on | (here & hsv[:, None])
        prev_hsv = hsv
    return scale, weight, saturation, hue, on


@register
class Jitter(Augmentation):
    name = "jitter"
    doc = (
        "colour jitter of strength s: brightness, contrast, saturation factors U[1-0.8s, 1+0.8s], "
        "hue shift U[-0.2s, 0.2s] of a turn, in a random order per sample, clipped after each"
    )
    p: float = param(0.8, 0.0, 1.0, "probability of jittering, drawn per sample")
    s: float = param(1.0, 0.0, 2.0, "colour distortion strength (0 = identity)")

    @property
    def is_noop(self) -> bool:
        return self.p == 0.0 or self.s == 0.0

    def draw(self, x: Tensor, generator: torch.Generator | None) -> Params:
        """factors columns: brightness, contrast, saturation, hue; order[:, i] = op at position i."""
        scale = _uniform(x, max(0.0, 1 - 0.8 * self.s), 1 + 0.8 * self.s, generator, 3)
        hue = _uniform(x, -0.2 * self.s, 0.2 * self.s, generator, 1)
        order = torch.rand(x.shape[0], 4, device=x.device, generator=generator).argsort(1)
        return {"factors": torch.cat([scale, hue], 1), "order": order}

    def transform(self, x: Tensor, params: Params) -> Tensor:
        # Every pass runs on the whole batch: linear slots with factors that are exactly neutral
        # for samples with nothing there, HSV slots kept (exact 0/1 lerp) only where a sample has
        # one, as their round trip is not bit-exact.
        # Two image buffers in turn: an HSV slot writes into the one the slot before last wrote
        # (a fresh large tensor costs the page faults of its first touch on a CPU).
        scale, weight, saturation, hue, on = _jitter_plan(params["order"], params["factors"])
        spare = None
        for j in range(_SLOTS):
            if j % 2:
                x = _brightness_contrast_(x, scale[:, j], weight[:, j])  # x: slot j-1's own output
            else:
                colour = _saturation_hue(x, saturation[:, j], hue[:, j], out=spare)
                spare = x if j else None  # slot 0's x is the caller's image: never written
                x = torch.lerp(x, colour, _per_sample(on[:, j].to(x.dtype)), out=colour)
        return x


@register
class Grayscale(Augmentation):
    name = "grayscale"
    doc = "convert to grayscale (ITU-R 601 luma) kept as 3 identical channels; standalone default p=1"

    def transform(self, x: Tensor, params: Params) -> Tensor:
        return kornia.color.rgb_to_grayscale(x).expand_as(x)


@register
class Color(Augmentation):
    name = "color"
    doc = (
        "SimCLR colour distortion of strength s: jitter with p=jitter_p, then grayscale with "
        "p=gray_p; s=0 is the identity (grayscale too is skipped)"
    )
    s: float = param(1.0, 0.0, 2.0, "colour distortion strength (0 = identity)")
    jitter_p: float = param(0.8, 0.0, 1.0, "probability of colour jitter, drawn per sample")
    gray_p: float = param(0.2, 0.0, 1.0, "probability of grayscale when s > 0, drawn per sample")

    @cached_property
    def parts(self) -> tuple[Augmentation, ...]:
        return Jitter(p=self.jitter_p, s=self.s), Grayscale(p=self.gray_p if self.s > 0 else 0.0)

    @property
    def is_noop(self) -> bool:
        return self.p == 0.0 or self.s == 0.0

    def draw(self, x: Tensor, generator: torch.Generator | None) -> Params:
        return sample_all(self.parts, x, generator)

    def transform(self, x: Tensor, params: Params) -> Tensor:
        return apply_all(self.parts, x, params)


@register
class Blur(Augmentation):
    name = "blur"
    doc = (
        "gaussian blur, sigma U[sigma_min, sigma_max] per sample, kernel side 10% of the image "
        "side (odd, >= 3), reflect padding"
    )
    p: float = param(0.5, 0.0, 1.0, "probability of blurring, drawn per sample")
    sigma_min: float = param(0.1, 0.01, 20.0, "smallest sigma in pixels")
    sigma_max: float = param(2.0, 0.01, 20.0, "largest sigma in pixels")

    def draw(self, x: Tensor, generator: torch.Generator | None) -> Params:
        return {"sigma": _uniform(x, self.sigma_min, self.sigma_max, generator)}

    def transform(self, x: Tensor, params: Params) -> Tensor:
        k = 2 * (min(x.shape[-2:]) // 10 // 2) + 1  # the official code's height // 10, made odd
        # kornia's gaussian_blur2d without its check that sigma > 0, which reads the device from the host
        # (sigma_min > 0 is validated with the config): the same kernels and separable filter
        kernel = kornia.filters.get_gaussian_kernel1d(max(k, 3), params["sigma"].view(-1, 1).to(x.dtype))
        return kornia.filters.filter2d_separable(x, kernel, kernel, border_type="reflect")


@register
class Cutout(Augmentation):
    name = "cutout"
    doc = (
        "erase one square per sample, side U[size_min, size_max] of the shorter image side, "
        "placed fully inside the image, filled black ('zero') or a random uniform colour ('random')"
    )
    size_min: float = param(0.2, 0.0, 1.0, "smallest square side, as a fraction of the image side")
    size_max: float = param(0.5, 0.0, 1.0, "largest square side, as a fraction of the image side")
    fill: str = param("zero", doc="fill of the erased square", choices=("zero", "random"))

    def draw(self, x: Tensor, generator: torch.Generator | None) -> Params:
        _, c, h, w = x.shape
        side = (_uniform(x, self.size_min, self.size_max, generator) * min(h, w)).round().clamp(1, min(h, w))
        box = torch.stack([_box_start(x, side, w, generator), _box_start(x, side, h, generator), side], 1)
        colour = _uniform(x, 0.0, 1.0, generator, c) * (self.fill == "random")
        return {"box": box, "colour": colour}

    def transform(self, x: Tensor, params: Params) -> Tensor:
        x0, y0, side = params["box"].unbind(1)
        ys = torch.arange(x.shape[-2], device=x.device)
        xs = torch.arange(x.shape[-1], device=x.device)
        rows = (ys >= y0[:, None]) & (ys < (y0 + side)[:, None])
        cols = (xs >= x0[:, None]) & (xs < (x0 + side)[:, None])
        inside = (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)
        return torch.where(inside, params["colour"][:, :, None, None], x)


@register
class Sobel(Augmentation):
    name = "sobel"
    doc = (
        "Sobel gradient magnitude of the grayscale image, divided by each image's maximum "
        "(flat image -> black), as 3 identical channels"
    )

    def transform(self, x: Tensor, params: Params) -> Tensor:
        gray = kornia.color.rgb_to_grayscale(x)
        b, c, h, w = gray.shape  # kornia's sobel (normalised kernels, replicated border, eps 0), its kernel cached
        padded = F.pad(gray.reshape(b * c, 1, h, w), [1, 1, 1, 1], "replicate")
        gx, gy = F.conv2d(padded, _sobel_kernels(x.device, x.dtype)).reshape(b, c, 2, h, w).unbind(2)
        edges = torch.sqrt(gx * gx + gy * gy + 0.0)
        edges = edges / edges.amax((1, 2, 3), keepdim=True).clamp_min(1e-8)
        return edges.expand_as(x)


@functools.lru_cache(maxsize=8)
def _sobel_kernels(device: torch.device, dtype: torch.dtype) -> Tensor:
    """kornia's normalised Sobel kernels (d/dx, d/dy) as (2, 1, 3, 3), built once per device from an
    arange there: kornia builds them from a Python list, a host-to-device copy, at every call."""
    d = torch.arange(-1, 2, device=device, dtype=dtype)  # the derivative taps -1, 0, 1
    s = 2 - d.abs()  # the smoothing taps 1, 2, 1
    return torch.stack([torch.outer(s, d), torch.outer(d, s)])[:, None] / 8


@register
class Noise(Augmentation):
    name = "noise"
    doc = (
        "additive gaussian noise, i.i.d. per pixel and channel, sigma U[sigma_min, sigma_max] "
        "per sample, clipped to [0, 1]"
    )
    sigma_min: float = param(0.0, 0.0, 1.0, "smallest noise standard deviation (image range is [0, 1])")
    sigma_max: float = param(0.1, 0.0, 1.0, "largest noise standard deviation (image range is [0, 1])")

    def draw(self, x: Tensor, generator: torch.Generator | None) -> Params:
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return {"sigma": _uniform(x, self.sigma_min, self.sigma_max, generator), "noise": noise}

    def transform(self, x: Tensor, params: Params) -> Tensor:
        return (x + _per_sample(params["sigma"]) * params["noise"]).clamp(0, 1)


@register
class Rotate(Augmentation):
    name = "rotate"
    doc = "rotate counter-clockwise by 90, 180 or 270 degrees, uniform per sample (square images)"

    def draw(self, x: Tensor, generator: torch.Generator | None) -> Params:
        return {"quarter_turns": torch.randint(1, 4, (x.shape[0],), device=x.device, generator=generator)}

    def transform(self, x: Tensor, params: Params) -> Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rotate needs square images so that 90-degree turns keep the shape; got {tuple(x.shape)}")
        k = _per_sample(params["quarter_turns"])
        return torch.where(
            k == 1, x.rot90(1, (-2, -1)), torch.where(k == 2, x.rot90(2, (-2, -1)), x.rot90(3, (-2, -1)))
        )


@register
class Solarize(Augmentation):
    name = "solarize"
    doc = "invert every value at or above threshold (x >= t -> 1 - x), as PIL's solarize"
    threshold: float = param(0.5, 0.0, 1.0, "values at or above it are inverted")

    def transform(self, x: Tensor, params: Params) -> Tensor:
        return torch.where(x >= self.threshold, 1 - x, x)


@register
class Equalize(Augmentation):
    name = "equalize"
    doc = "histogram equalisation per image and channel on 8-bit levels (PIL's algorithm, batched)"

    def transform(self, x: Tensor, params: Params) -> Tensor:
        return kornia.enhance.equalize(x)


@register
class Posterize(Augmentation):
    name = "posterize"
    doc = "keep the top `bits` bits of each 8-bit value"
    bits: int = param(4, 1, 8, "bits kept per channel")

    def transform(self, x: Tensor, params: Params) -> Tensor:
        bits = torch.full((x.shape[0],), self.bits, device=x.device)  # built on the device: no copy
        return kornia.enhance.posterize(x, bits)
