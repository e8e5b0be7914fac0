"""The embedded "shapes" data set: 10 classes told apart by shape only, every image with its own palette.

Why it exists: on natural photos, two random crops of one image share a colour histogram, so a
network trained with crop alone can match the views by colour and learn little else; colour
distortion removes that shortcut (SimCLR, Section 3.1). This set has the same property by design
and is generated offline from a seed in about a second, so the crop x colour effect can be seen
without a download.

How an image is made (batched torch, in chunks of images, one SDF call per class):
- Class (balanced: ``arange(n) % 10``, shuffled) picks one of ten shapes, written as signed-distance
  functions (SDF) in shape-local coordinates: disk, ring, square outline, filled triangle, plus,
  5-point star, X, horizontal bars, dot grid, crescent. The shapes are large (40-90 % of the
  image width) and several carry a local texture (stripes, dots, strokes) so a crop of a part
  still shows the class. Their constants give every class the same mean area (21-23 % of the
  image), so the fraction of foreground colour says nothing about the class.
- Per image, independent of the class: centre (jitter), scale, rotation (+-15 degrees, so plus and
  X stay apart), stroke width, and a few shape details (star sharpness, crescent offset).
- Per image, independent of the class: the palette, one hue for the whole image. Hue, saturation
  and the background's value come from narrow ranges, and the foreground differs from the
  background in value only. Undistorted views (crop alone) still match exactly by colour, but
  colour distortion's jitter (hue +-0.2, brightness, contrast and saturation x[0.2, 1.8]) is wider
  than the spread between images, so a distorted view no longer says by its colour which image it
  came from: the shortcut is there for crop alone and gone under crop + colour, as on photos.
  Each colour field has a mild linear gradient.
- Per image, independent of the class: a faint grey sinusoidal grating over the background
  (random orientation, 3-8 cycles per image, random phase, amplitude 0.05-0.1), the same in every
  channel. Colour distortion keeps it, so two pixel-aligned views (colour alone) can be matched by
  its orientation and frequency without looking at the shape; a random crop zooms, shifts and flips
  it. It stands in for the class-irrelevant low-level structure of photos that makes colour
  distortion alone a poor pretext task.
- Up to five clutter items (small blobs and short line segments in the image's hue, each with its
  own random value, at uniform positions) are drawn under the shape, and Gaussian pixel noise of a
  random level (0-0.03) is added.
- Pixels: coverage = smoothstep of the SDF over one pixel (anti-aliasing), alpha-composited,
  rounded to uint8.
So colour, brightness, grating, noise and position carry no class information; only shape does.
Train and test are independent draws from seeds derived from the one seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .sources import ImageSet

# Shape SDFs in local coordinates (unit ~ shape radius), x right, y up. `w` scales stroke width,
# `u` is a per-image uniform draw in [0, 1) for shape details. Constants equalise the mean area.


def _box(x: Tensor, y: Tensor, bx: float | Tensor, by: float | Tensor) -> Tensor:
    dx, dy = x.abs() - bx, y.abs() - by
    outside = torch.hypot(dx.clamp(min=0), dy.clamp(min=0))
    return outside + torch.maximum(dx, dy).clamp(max=0)


def _disk(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    return torch.hypot(x, y) - 0.7


def _ring(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    return (torch.hypot(x, y) - 0.78).abs() - 0.16 * w


def _square(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    return _box(x, y, 0.75, 0.75).abs() - 0.13 * w


def _triangle(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    r, k = 0.94, math.sqrt(3.0)  # half side; circumradius 2r/sqrt(3)
    px, py = x.abs() - r, y + r / k
    fold = px + k * py > 0
    px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
    px = px - px.clamp(-2 * r, 0)
    return -torch.hypot(px, py) * torch.sign(py)


def _plus(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    return torch.minimum(_box(x, y, 0.9, 0.245 * w), _box(x, y, 0.245 * w, 0.9))


def _x(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    c = math.sqrt(0.5)
    return _plus(c * (x - y), c * (x + y), w, u)


def _star(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    r, rf = 1.0, 0.45 + 0.15 * u  # outer radius, sharpness (larger = fatter arms)
    k1x, k1y = 0.809016994375, -0.587785252292
    px, py = x.abs(), y
    for kx in (k1x, -k1x):
        d = (kx * px + k1y * py).clamp(min=0)
        px, py = px - 2 * d * kx, py - 2 * d * k1y
    px, py = px.abs(), py - r
    bax, bay = -rf * k1y, rf * k1x - 1
    h = ((px * bax + py * bay) / (bax * bax + bay * bay)).clamp(0, r)
    return torch.hypot(px - bax * h, py - bay * h) * torch.sign(py * bax - px * bay)


def _bars(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    period = 0.44
    q = (y / period - torch.floor(y / period) - 0.5) * period  # 4 bars centred at +-0.22, +-0.66
    return torch.maximum(_box(x, y, 0.85, 0.88), q.abs() - 0.11 * w)


def _dots(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    period = 0.42
    qx, qy = x - period * torch.round(x / period), y - period * torch.round(y / period)
    return torch.maximum(_box(x, y, 0.98, 0.98), torch.hypot(qx, qy) - 0.137 * w)


def _crescent(x: Tensor, y: Tensor, w: Tensor, u: Tensor) -> Tensor:
    offset = 0.4 + 0.15 * u
    return torch.maximum(torch.hypot(x, y) - 1.0, -(torch.hypot(x - offset, y) - 0.8))


SHAPES: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "disk": _disk,
    "ring": _ring,
    "square": _square,
    "triangle": _triangle,
    "plus": _plus,
    "star": _star,
    "x": _x,
    "bars": _bars,
    "dots": _dots,
    "crescent": _crescent,
}
CLUTTER_ITEMS = 5
# Palette ranges (HSV, [0, 1]): narrower than colour distortion's jitter (see module docstring).
PALETTE = {"hue": (0.5, 0.6), "saturation": (0.45, 0.65), "value": (0.4, 0.7), "value_gap": (0.15, 0.3)}
# Background grating: cycles per image width, and the largest amplitude (image range [0, 1]).
GRATING_CYCLES = (3.0, 8.0)
GRATING_AMPLITUDE = 0.1
# Pixels rendered at once (256 images at 32x32): small tensors reuse freed memory instead of
# page-faulting fresh allocations, which made one big batch ~5x slower.
CHUNK_PIXELS = 256 * 32 * 32


def _uniform(g: torch.Generator, *shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def _smooth_cover(sdf: Tensor, half_pixel: float) -> Tensor:
    """Anti-aliased coverage: 1 inside, 0 outside, smoothstep across one pixel at the edge."""
    t = ((half_pixel - sdf) / (2 * half_pixel)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _hsv_to_rgb(hue: Tensor, sat: Tensor, value: Tensor) -> Tensor:
    """RGB (..., 3) from HSV tensors of equal shape, all in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue[..., None] * 6) % 6
    return value[..., None] * (1 - sat[..., None] * torch.minimum(k, 4 - k).clamp(0, 1))


def _palette(g: torch.Generator, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Background and foreground RGB (n, 3) of one hue, and that hue and saturation (n,).

    The ranges (PALETTE) are narrower than colour distortion's jitter; see the module docstring.
    """
    hue, sat, value, gap = (_uniform(g, n, lo=lo, hi=hi) for lo, hi in PALETTE.values())
    sign = torch.where(_uniform(g, n) < 0.5, -1.0, 1.0)  # foreground lighter or darker
    return _hsv_to_rgb(hue, sat, value), _hsv_to_rgb(hue, sat, value + sign * gap), hue, sat


def _gradient(g: torch.Generator, n: int, base: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Colour field (n,3,H,W): base colour plus a mild random linear ramp per channel."""
    slope = _uniform(g, n, 3, 2, lo=-0.12, hi=0.12)
    return base[:, :, None, None] + slope[..., 0, None, None] * gx + slope[..., 1, None, None] * gy


def _grating(g: torch.Generator, n: int, gx: Tensor, gy: Tensor) -> Tensor:
    """Grey sinusoidal grating (n,1,H,W): random orientation, frequency and phase, amplitude
    U[GRATING_AMPLITUDE / 2, GRATING_AMPLITUDE]; the same in every channel (see module docstring)."""
    angle = _uniform(g, n, 1, 1, hi=math.pi)
    cycles = _uniform(g, n, 1, 1, lo=GRATING_CYCLES[0], hi=GRATING_CYCLES[1])
    omega = cycles * math.pi  # image coordinates span 2 per width
    phase = _uniform(g, n, 1, 1, hi=2 * math.pi)
    amplitude = _uniform(g, n, 1, 1, lo=GRATING_AMPLITUDE / 2, hi=GRATING_AMPLITUDE)
    wave = torch.sin(omega * (gx * torch.cos(angle) + gy * torch.sin(angle)) + phase)
    return (amplitude * wave)[:, None]


def _clutter_cover(g: torch.Generator, n: int, gx: Tensor, gy: Tensor, half_pixel: float) -> Tensor:
    """Coverage (K,n,H,W) of small blobs / short segments at uniform positions; some items absent."""
    k = CLUTTER_ITEMS
    cx, cy = _uniform(g, k, n, 1, 1, lo=-0.95, hi=0.95), _uniform(g, k, n, 1, 1, lo=-0.95, hi=0.95)
    angle, length = _uniform(g, k, n, 1, 1, hi=math.pi), _uniform(g, k, n, 1, 1, lo=0.2, hi=0.5)
    is_line = _uniform(g, k, n, 1, 1) < 0.5
    length = torch.where(is_line, length, torch.zeros_like(length))
    radius = torch.where(is_line, _uniform(g, k, n, 1, 1, lo=0.015, hi=0.035), _uniform(g, k, n, 1, 1, lo=0.04, hi=0.1))
    present = _uniform(g, k, n, 1, 1) < 0.6
    # distance to a segment centred at (cx, cy) with the given angle and length (0 = a disk)
    px, py = gx - cx, gy - cy
    dx, dy = torch.cos(angle), torch.sin(angle)
    along = (px * dx + py * dy).clamp(-length / 2, length / 2)
    sdf = torch.hypot(px - along * dx, py - along * dy) - radius
    return _smooth_cover(sdf, half_pixel) * present


def _local_coords(g: torch.Generator, n: int, gx: Tensor, gy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Shape-local coordinates (n,H,W) under a random pose (centre, scale, +-15 degree rotation), and
    the scale that turns local distances back into image distances."""
    scale, angle = _uniform(g, n, lo=0.6, hi=0.9), _uniform(g, n, lo=-1, hi=1) * math.radians(15)
    shift = _uniform(g, n, 2, lo=-1, hi=1) * (1 - scale[:, None]) * 0.6
    px, py = gx - shift[:, 0, None, None], gy - shift[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    scale = scale[:, None, None]
    return (cos * px + sin * py) / scale, (cos * py - sin * px) / scale, scale


def _render(labels: Tensor, size: int, g: torch.Generator) -> Tensor:
    n = len(labels)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = torch.meshgrid(-coords, coords, indexing="ij")  # y up
    half_pixel = 1.0 / size
    bg, fg, hue, sat = _palette(g, n)
    image = _gradient(g, n, bg, gx, gy) + _grating(g, n, gx, gy)
    clutter = _clutter_cover(g, n, gx, gy, half_pixel)
    clutter_colours = _hsv_to_rgb(
        hue.expand(CLUTTER_ITEMS, n), sat.expand(CLUTTER_ITEMS, n), _uniform(g, CLUTTER_ITEMS, n)
    )
    for cover, colour in zip(clutter, clutter_colours):
        image = torch.lerp(image, colour[:, :, None, None].expand_as(image), cover[:, None])
    lx, ly, scale = _local_coords(g, n, gx, gy)
    width, detail = _uniform(g, n, 1, 1, lo=0.75, hi=1.25), _uniform(g, n, 1, 1)
    sdf = torch.empty(n, size, size)
    for c, shape in enumerate(SHAPES.values()):
        i = (labels == c).nonzero().squeeze(1)
        sdf[i] = shape(lx[i], ly[i], width[i], detail[i]) * scale[i]
    image = torch.lerp(image, _gradient(g, n, fg, gx, gy), _smooth_cover(sdf, half_pixel)[:, None])
    noise = torch.randn(n, 3, size, size, generator=g) * _uniform(g, n, 1, 1, 1, hi=0.03)
    return (image + noise).clamp(0, 1).mul(255).round().to(torch.uint8)


def _split_seed(seed: int, split: str) -> int:
    digest = hashlib.sha256(f"ablation.embedded:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops single-threaded: on chunks this small, intra-op thread syncs cost more than
    the work (10x slower on a busy 2-core machine); the result does not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _make_split(n: int, size: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(SHAPES))[torch.randperm(n, generator=g)]
    with _one_thread():
        images = torch.cat([_render(part, size, g) for part in labels.split(max(1, CHUNK_PIXELS // size**2))])
    return ImageSet(images, labels, list(SHAPES))


def make_embedded(n_train: int = 5000, n_test: int = 1000, size: int = 32, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Train and test splits of the shapes set (see module docstring); identical tensors per seed."""
    if n_train < 1 or n_test < 1 or size < 8:
        raise ValueError(
            f"make_embedded needs n_train, n_test >= 1 and size >= 8; "
            f"got n_train={n_train}, n_test={n_test}, size={size}"
        )
    return (
        _make_split(n_train, size, _split_seed(seed, "train")),
        _make_split(n_test, size, _split_seed(seed, "test")),
    )
