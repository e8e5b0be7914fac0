"""A cell config checked against the registries: its augmentation specs parse, its method and the
method's parameters are registered.

One layer above config.py: the registries import config (a method is built from a CellConfig), so
config imports neither of them, and whoever builds a config for use passes `check_registered` to it
(grid expansion, `ablate run`): a name no registry holds is a one-line error before anything runs.
Torch is imported only when a check runs, so importing this module stays cheap (`ablate status`).
"""

from __future__ import annotations

from typing import Any

from . import config
from .config import CellConfig


def check_registered(cfg: CellConfig) -> CellConfig:
    """``cfg``, or the ValueError of the first name in it that no registry holds (it names the key)."""
    from .augment import parse_spec
    from .methods import check_method

    for key in ("views", "base"):
        try:
            parse_spec(getattr(cfg.augment, key))
        except ValueError as err:
            raise ValueError(f"augment.{key}: {err}") from None
    try:
        check_method(cfg.method, cfg.method_args)
    except ValueError as err:
        raise ValueError(f"method: {err}") from None
    return cfg


def key_docs() -> list[tuple[str, Any, str]]:
    """config.key_docs with the registered methods as the choices of `method` (`ablate run --help`)."""
    from .methods import REGISTRY

    return config.key_docs(choices={"method": tuple(REGISTRY)})
