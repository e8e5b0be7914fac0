"""Batched GPU-friendly augmentations with per-sample parameters, specs, two views and previews."""

from __future__ import annotations

from . import ops  # noqa: F401  (registers the built-in ops)

# isort: split
from . import autoaugment  # noqa: F401  (registers autoaugment, after the built-in ops)
from .pipeline import Compose, TwoViews, parse_spec
from .preview import load_image, preview
from .registry import REGISTRY, Augmentation, describe_registry, param, register

__all__ = [
    "REGISTRY",
    "Augmentation",
    "Compose",
    "TwoViews",
    "describe_registry",
    "load_image",
    "param",
    "parse_spec",
    "preview",
    "register",
]
