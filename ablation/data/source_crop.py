"""Where the first crop of a cell's pipeline is drawn when images are larger than the training size.

Images of an ImageNet-like folder differ in size, so the pipeline's first random resized crop is
drawn from the full image (streaming) or from the stored image (resident, data.stored_size) and
resized to data.size; the remaining ops run batched on the device at data.size. Which crop comes
first follows the paper's protocol for the experiment (`split_source_crop`):

- a base crop (augment.base starting with `crop`, Figure 5's asymmetric protocol): one crop per
  image, shared by both views; the targeted ops then run on the device, on one branch;
- no base and symmetric views starting with `crop` (standard SimCLR): one crop per view, each drawn
  independently from the full image; the rest of the views runs on the device;
- otherwise no crop at the source: the centre square of the image, resized (as for evaluation).

The draws are fractions (areas and log aspect ratios of the tries, position, flip, apply) turned
into pixel boxes per image by the `crop` op's own redraw (ops.fitting_sides), so a rank needs only
its own images' sizes and the draw of a global batch does not depend on how it is sharded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..augment import Compose, TwoViews, parse_spec
from ..augment.ops import Crop, fitting_sides, placed_box, resized_crop

TRIES = Crop.tries
DRAWS = 2 * TRIES + 4  # uniforms per crop: TRIES areas, TRIES log aspect ratios, x, y, flip, apply
AREAS, RATIOS = slice(0, TRIES), slice(TRIES, 2 * TRIES)
X, Y, FLIP, APPLY = range(2 * TRIES, DRAWS)


@dataclass(frozen=True)
class SourceCrop:
    """The first crop, taken at the source (None: the centre square), how many per image (1: shared,
    2: one per view), and the base and views that run on the device after it."""

    crop: Crop | None
    crops: int
    base: Compose
    views: Compose
    mode: str

    def describe(self) -> dict:
        return {
            "first_crop": self.crop and Compose([self.crop]).spec,
            "crops_per_image": self.crops,
            "base": self.base.spec,
            "views": self.views.spec,
            "mode": self.mode,
        }


def split_source_crop(views: str, base: str, mode: str) -> SourceCrop:
    """Split the first crop off an augmentation setting (see the module docstring)."""
    base_c, views_c = parse_spec(base), parse_spec(views)
    if base_c.ops and isinstance(base_c.ops[0], Crop):
        return SourceCrop(base_c.ops[0], 1, Compose(base_c.ops[1:]), views_c, mode)
    if not base_c.ops and mode == "symmetric" and views_c.ops and isinstance(views_c.ops[0], Crop):
        return SourceCrop(views_c.ops[0], 2, base_c, Compose(views_c.ops[1:]), mode)
    return SourceCrop(None, 1, base_c, views_c, mode)


def draw(n: int, generator: torch.Generator | None, device: torch.device | str = "cpu") -> Tensor:
    """The uniforms of n crops (n, DRAWS)."""
    return torch.rand(n, DRAWS, generator=generator, device=device)


def boxes(crop: Crop | None, u: Tensor, heights: Tensor, widths: Tensor, centre: float = 1.0) -> tuple[Tensor, Tensor]:
    """Pixel boxes (n, 4: x0, y0, width, height) and flips (n,) of the draws `u` on images of these sizes.

    crop=None, or a crop not applied (its p): the centre square, `centre` times the shorter side.
    """
    h, w = heights.to(u), widths.to(u)
    side = (torch.minimum(h, w) * centre).round().clamp_min(1)
    fit = torch.stack([((w - side) / 2).floor(), ((h - side) / 2).floor(), side, side], 1)
    if crop is None:
        return fit, torch.zeros(len(u), dtype=torch.bool, device=u.device)
    sides = fitting_sides(
        u[:, AREAS], u[:, RATIOS], h, w, (crop.scale_min, crop.scale_max), (crop.ratio_min, crop.ratio_max)
    )
    box = placed_box(u[:, X], u[:, Y], sides, h, w)
    applied = u[:, APPLY] < crop.p
    flip = (u[:, FLIP] < (0.5 if crop.flip else 0.0)) & applied
    return torch.where(applied[:, None], box, fit), flip


class SourceViews:
    """The two views of batches whose first crop is taken at the source.

    Input: (B, crops, 3, S, S) crops (uint8 from the streaming loader), or with `stored` the stored
    images (B, 3, R, R) of the resident path, cropped here on the device with the generator's first
    draws. Output: the two float views (B, 3, S, S).
    """

    def __init__(self, source: SourceCrop, size: int, stored: bool = False):
        self.source, self.size, self.stored = source, size, stored
        self.two = TwoViews(source.views, source.base, source.mode)

    def crop_stored(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        b, _, h, w = x.shape
        n = self.source.crops
        u = draw(b * n, generator, x.device)
        side = torch.full((b * n,), float(h), device=x.device)
        box, flip = boxes(self.source.crop, u, side, side * w / h)
        return resized_crop(x.repeat_interleave(n, 0), box, flip, (self.size, self.size)).unflatten(0, (b, n))

    def _source_crops(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """The float source crops (B, crops, 3, S, S) of the input."""
        if x.dtype == torch.uint8:  # streamed crops come channels-last: make the usual layout here
            x = x.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        return self.crop_stored(x, generator) if self.stored else x

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        x = self._source_crops(x, generator)
        if self.source.crops == 1:
            return self.two(x[:, 0], generator)
        first, second = self.source.views(x.transpose(0, 1).flatten(0, 1), generator).chunk(2)
        return first, second

    def one(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A single view, for methods that train on one (supervised): the first source crop, then the
        base and the views on the device, as the first view of `__call__` draws them."""
        return self.two.one(self._source_crops(x, generator)[:, 0], generator)  # two crops: no base

    def __repr__(self) -> str:
        return f"SourceViews({self.source.describe()}, size={self.size}, stored={self.stored})"
