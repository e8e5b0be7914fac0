"""Training methods behind one interface (views -> loss -> update), chosen per cell with `method`."""
from __future__ import annotations

from . import simclr, supervised, byol, simsiam, barlow_twins  # noqa: F401  (register the built-in methods)
from .registry import REGISTRY, Method, build_method, check_method, describe_methods, param, register

__all__ = ["REGISTRY", "Method", "build_method", "check_method", "describe_methods", "param", "register"]
