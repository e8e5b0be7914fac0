"""A Figure-4-style gallery: one row per spec, the original then random draws."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from .pipeline import parse_spec

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.png"


def load_image(path: Path | str | None = None, size: int = 128) -> Tensor:
    """(1, 3, size, size) float in [0, 1], centre-cropped to a square so every op (rotate) applies."""
    with Image.open(path or SAMPLE) as im:
        im = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)


def preview(
    specs: Sequence[str], out: Path | str, image: Path | str | None = None, draws: int = 6, seed: int = 0
) -> Path:
    """Write a PNG gallery of ``draws`` random draws of each spec; the built-in sample without ``image``."""
    # matplotlib is imported here, not at module level: training jobs import this package
    from matplotlib.figure import Figure

    composes = [parse_spec(spec) for spec in specs]  # fail on a bad spec before drawing anything
    x = load_image(image)
    generator = torch.Generator().manual_seed(seed)
    fig = Figure(figsize=(1.2 * (draws + 1), 1.3 * len(composes) + 0.3), layout="constrained")
    axes: Any = fig.subplots(len(composes), draws + 1, squeeze=False)
    for row, compose in zip(axes, composes):
        views = compose(x.expand(draws, -1, -1, -1).contiguous(), generator)
        for col, (ax, img) in enumerate(zip(row, [x[0], *views])):
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(compose.spec, rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("original", fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
