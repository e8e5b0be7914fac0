"""The method registry: one decorated nn.Module class per training method, parameters declared with `param`.

A method holds everything that differs between SimCLR, BYOL, supervised training, ...: the encoder
and its own heads (projector, predictor, classifier), any target network, how many views of a batch
it trains on, its loss, and what it updates after each optimiser step (a momentum target). The
cell's loop stays the same for all: ``views`` -> ``forward`` (the networks) -> ``loss`` -> optimiser
step -> ``update``. Everything a method learns or tracks is in its ``state_dict``, and what depends on
the training position (a momentum schedule) is a function of (step, total steps), so the checkpoint
resumes it exactly. Parameters are declared as for augmentations and set with ``method_args``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import Tensor, nn

from ..augment import TwoViews
from ..config import CellConfig
from ..errors import choices_error
from ..model import build_encoder, build_head
from ..registry import coerce, declared_params, entry_docs, lookup, param, registrable_name

if TYPE_CHECKING:
    from ..data.source_crop import SourceViews

__all__ = ["REGISTRY", "Method", "build_method", "check_method", "describe_methods", "param", "register"]

REGISTRY: dict[str, type[Method]] = {}


class Method(nn.Module):
    """Base of every method: the encoder (what the probes evaluate), parameters, two views, no update.

    Subclasses build their heads in ``__init__`` (after ``super().__init__``, so the encoder's
    initialisation is the first draw from the cell's seed) and implement
    - ``forward(views)``: the networks, returning the tensors the loss needs. This is what runs
      under DDP, torch.compile and bf16 autocast on a GPU (the cell's hot path);
    - ``loss(outputs, labels)``: the scalar loss in float32, run eager and outside autocast. Under
      DDP it sees this rank's share of the batch; a loss that needs the whole batch gathers it
      (``ablation.dist.gather_with_grad``);
    - ``project(x)`` where the method has a projection: the embeddings whose alignment and
      uniformity the per-epoch log measures (ablation/metrics_log.py); None skips that measurement.
    """

    name: ClassVar[str]
    doc: ClassVar[str]
    params: ClassVar[dict[str, dataclasses.Field]] = {}
    n_views: ClassVar[int] = 2  # views of each image that `views` returns (the step's cost counts them)

    def __init__(self, cfg: CellConfig, n_classes: int, **args: Any) -> None:
        super().__init__()
        for key, value in resolve_args(type(self), args).items():
            setattr(self, key, value)
        m = cfg.model
        self.encoder, self.dim = build_encoder(m.encoder, cifar_stem=m.cifar_stem, width=m.width)

    def projection_head(self, cfg: CellConfig) -> nn.Module:
        """A new projection head on the encoder's features: model.head, its layers and widths."""
        m = cfg.model
        return build_head(m.head, self.dim, m.head_hidden, m.out_dim, m.head_layers, m.head_out_bn)

    def views(self, pair: TwoViews | SourceViews, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """The augmented inputs of one step (default: the cell's two views; `pair` is a folder's
        SourceViews when its first crop is taken at the source)."""
        return pair(x, generator)

    def features(self, x: Tensor) -> Tensor:
        """h = encoder(x), in the channels-last layout the convolutions are fastest in."""
        return self.encoder(x.contiguous(memory_format=torch.channels_last))

    def forward(self, views: tuple[Tensor, ...]) -> Any:
        """The networks on the step's views: whatever tensors ``loss`` needs."""
        raise NotImplementedError

    def loss(self, outputs: Any, labels: Tensor) -> Tensor:
        """The scalar float32 loss of ``forward``'s outputs (``labels``: the batch's classes)."""
        raise NotImplementedError

    def project(self, x: Tensor) -> Tensor | None:
        """Projections z of a batch, in training mode, for the per-epoch embedding statistics;
        None: the method has no projection to measure (nothing is run)."""
        return None

    def bias_lr_scale(self) -> float:
        """The learning rate of biases and normalisation parameters, as a fraction of the weights' (1: the same)."""
        return 1.0

    def update(self, step: int, total: int) -> None:
        """After optimiser step ``step`` (1-based) of ``total``: nothing by default (momentum targets move here)."""


def register(cls: type) -> type:
    """Class decorator: record a Method subclass under its unique ``name``, with its declared parameters."""
    name = registrable_name(cls, Method, REGISTRY, "method")
    method = cast(type[Method], cls)  # a Method subclass: registrable_name checked it
    method.params = {**method.params, **declared_params(cls, name)}
    REGISTRY[name] = method
    return cls


def method_class(name: str) -> type[Method]:
    return lookup(REGISTRY, "method", name)


def resolve_args(cls: type[Method], args: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of ``cls``: its default, or the given value checked against its type and range."""
    unknown = [key for key in args if key not in cls.params]
    if unknown and not cls.params:
        raise ValueError(f"method '{cls.name}' takes no parameters; got '{unknown[0]}'")
    if unknown:
        raise choices_error(f"'{cls.name}' parameter", unknown[0], cls.params)
    return {key: coerce(cls.name, f, args[key]) if key in args else f.default for key, f in cls.params.items()}


def check_method(name: str, args: dict[str, Any] | None) -> None:
    """Raise ValueError naming the problem when ``name`` is not registered or ``args`` do not fit it."""
    resolve_args(method_class(name), args or {})


def build_method(cfg: CellConfig, n_classes: int) -> Method:
    """The cell's method (``cfg.method`` with ``cfg.method_args``), freshly initialised from the global RNG."""
    return method_class(cfg.method)(cfg, n_classes, **(cfg.method_args or {}))


def describe_methods() -> list[dict[str, Any]]:
    """Every registered method with its doc and parameters."""
    return entry_docs(REGISTRY, lambda cls: cls.params.values())
