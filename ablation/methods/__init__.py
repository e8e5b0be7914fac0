"""Training methods behind one interface (views -> networks -> loss -> update), chosen per cell with `method`."""

from __future__ import annotations

# The registry's order is the listing order (`ablate methods`, `ablate run --help`): the paper's method first.
# isort: off
from . import simclr, supervised, byol, simsiam, barlow_twins  # noqa: F401  (register the built-in methods)

# isort: on
from .registry import REGISTRY, Method, build_method, check_method, describe_methods, param, register

__all__ = ["REGISTRY", "Method", "build_method", "check_method", "describe_methods", "param", "register"]
