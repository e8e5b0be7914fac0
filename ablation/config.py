"""One typed, validated config per cell: dataclasses built from YAML plus dotted overrides.

Every field carries its documentation and its allowed values in its metadata, so
validation, `--help`-style listings and error messages all come from one place. Names that a
registry holds (augmentation ops, methods) are checked one layer up, in ablation/registered.py:
the registries import this module, so it imports neither of them.
A cell's identity (ablation/identity.py) is a hash of the canonical meaning of the resolved
config and the schema version, never of the overrides that produced it; fields marked
`identity=False` cannot change a result and are left out of it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import names
from .errors import did_you_mean

# Bump when a default or the meaning of a field changes: old results must not be reused.
# 2: cell ids hash the canonical meaning (ablation/identity.py); model.sync_bn.
# 3: cell ids hash only the departures from the defaults, so new options keep old ids.
SCHEMA_VERSION = 3


def opt(
    default: Any,
    doc: str,
    *,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    identity: bool = True,
    spec: bool = False,
    args_of: str | None = None,
) -> Any:
    """A config field with its documentation and allowed values.

    identity=False: the field cannot change a result (how many workers decode, how often to
    checkpoint), so it is not part of the cell id. spec=True: the value is an augmentation spec,
    compared by its canonical form. args_of: the value is the parameters of the registered method
    named by that sibling field, compared as the method takes them (coerced, defaults left out).
    """
    return field(
        default=default,
        metadata={
            "doc": doc,
            "choices": choices,
            "low": low,
            "high": high,
            "identity": identity,
            "spec": spec,
            "args_of": args_of,
        },
    )


@dataclass
class DataConfig:
    name: str = opt("embedded", "data set", choices=names.DATASETS)
    root: str | None = opt(None, "where the data set lives (folder: root/train/<class>/*, root/test/<class>/*)")
    size: int = opt(32, "image side in pixels that the model sees", low=8, high=1024)
    download: bool = opt(False, "download cifar10/cifar100/stl10 into root when missing", identity=False)
    n_train: int = opt(5000, "embedded only: training images", low=10, high=1_000_000)
    n_test: int = opt(1000, "embedded only: test images", low=10, high=1_000_000)
    data_seed: int = opt(0, "embedded only: seed that generates the images (fixed across replicates)", low=0)
    per_class: int | None = opt(
        None,
        "keep the first k training images of each class (null: all; folders: "
        "the first in file-name order); the test split stays whole",
        low=1,
    )
    resident: str = opt("auto", "keep the uint8 set on the device (auto: when it fits)", choices=names.RESIDENT)
    workers: int = opt(
        4, "decoding workers for the streaming loader and folder decoding", low=0, high=256, identity=False
    )
    serve: str = opt(
        "auto",
        "folder: resident (decoded once at data.stored_size, uint8 in memory) or stream "
        "(loader workers decode every image each epoch and crop it from the full image); "
        "auto: resident when the stored set fits in 32 GiB, else stream",
        choices=names.SERVE_MODES,
    )
    stored_size: int | None = opt(
        None,
        "folder, resident: side of the stored images (shorter side resized, "
        "centre crop); the first crop is drawn from them and resized to data.size "
        "(none: data.size, as for CIFAR)",
        low=8,
        high=4096,
    )
    decode: str = opt(
        "workers",
        "stream: decode JPEGs in the loader workers (CPU, at reduced scale where the "
        "crop allows) or on the training device in batches (torchvision decode_jpeg; nvJPEG on a GPU)",
        choices=names.DECODERS,
    )
    classes: list | str | None = opt(
        None,
        "folder: class folders to use, a list or a file of names "
        "(one a line) or a shipped list: imagenet100 (none: all)",
    )
    fingerprint: str | None = opt(
        None,
        "folder: what its images are, a hash of their names and sizes that the "
        "cell id holds instead of data.root, so moved data keeps its cells (filled in "
        "from the folder; give it only to name a folder that is not here)",
    )


@dataclass
class AugmentConfig:
    views: str = opt("crop+color", "augmentation spec of the targeted ops, e.g. crop+color(s=0.5)+blur", spec=True)
    base: str = opt("none", "spec applied to every image before both views (ImageNet protocol: crop)", spec=True)
    mode: str = opt(
        "symmetric",
        "asymmetric: ops on one view only (paper's ablation protocol); "
        "symmetric: ops drawn independently on both views (standard SimCLR)",
        choices=names.VIEW_MODES,
    )


@dataclass
class ModelConfig:
    encoder: str = opt("small_cnn", "encoder network", choices=names.ENCODERS)
    width: int = opt(16, "small_cnn only: channels of the first block (8x this is the feature size)", low=4, high=1024)
    cifar_stem: bool = opt(True, "resnets: 3x3 stride-1 first conv and no max-pool (small images)")
    head: str = opt("nonlinear", "projection head", choices=names.HEADS)
    head_layers: int = opt(2, "nonlinear head: number of linear layers", low=2, high=8)
    head_hidden: int | None = opt(
        512, "nonlinear head: hidden width (null: the width of h, as the paper's reference code)", low=1, high=65536
    )
    head_out_bn: bool = opt(
        False,
        "nonlinear head: batch norm on the output layer too, with a scale and no bias (the paper's reference code)",
    )
    out_dim: int = opt(128, "projection output dimension z", low=1, high=65536)
    sync_bn: bool = opt(
        True,
        "global batch norm (the paper's): statistics over the whole batch when more than "
        "one process trains the cell; no effect with one process",
    )


@dataclass
class LossConfig:
    name: str = opt("nt_xent", "contrastive loss (paper Table 4)", choices=names.LOSSES)
    temperature: float = opt(0.5, "temperature tau", low=1e-4, high=1e4)
    normalize: bool = opt(True, "l2-normalise projections before the similarity")
    margin: float = opt(1.0, "margin loss only: margin m", low=0.0, high=100.0)
    semi_hard: bool = opt(False, "nt_logistic and margin only: semi-hard negative mining (Table 4's 'sh' rows)")


@dataclass
class OptimConfig:
    name: str = opt("lars", "optimiser", choices=names.OPTIMIZERS)
    lr: float | None = opt(
        None, "base learning rate before scaling (none: 0.3 for linear, 0.075 for sqrt)", low=0.0, high=1e3
    )
    lr_scaling: str = opt(
        "sqrt",
        "learning-rate scaling with batch size: linear (lr x B/256), sqrt (lr x sqrt(B))",
        choices=names.LR_SCALINGS,
    )
    weight_decay: float = opt(1e-6, "weight decay (not on biases and normalisation parameters)", low=0.0, high=1.0)
    momentum: float = opt(0.9, "momentum (lars, sgd)", low=0.0, high=1.0)
    warmup_epochs: float = opt(1.0, "linear warmup before cosine decay", low=0.0, high=1e4)


@dataclass
class TrainConfig:
    epochs: int = opt(20, "pretraining epochs", low=1, high=100_000)
    batch_size: int = opt(256, "images per step (each gives two views)", low=2, high=1_000_000)
    seed: int = opt(0, "seed of model init, shuffling and augmentation draws", low=0)
    device: str = opt("auto", "auto (cuda when available), cpu, cuda, cuda:N")
    precision: str = opt("auto", "auto: bf16 autocast on GPU, fp32 on CPU", choices=names.PRECISIONS)
    compile: str = opt(
        "auto",
        "torch.compile the model: auto (on GPU, not on CPU), always, never; a compilation "
        "that fails falls back to eager with a one-line message",
        choices=names.COMPILE_MODES,
    )
    checkpoint_every: int = opt(
        5, "epochs between checkpoints (one is always written at the end)", low=1, identity=False
    )
    log_every: int = opt(
        0,
        "epochs between linear and kNN probes logged in metrics.jsonl during training (0: only the final evaluation)",
        low=0,
    )


@dataclass
class EvalConfig:
    linear: str = opt(
        names.LBFGS,
        "linear evaluation protocol of linear_top1/top5 and the per-class and per-image "
        "records: lbfgs (full-batch L-BFGS on standardised features of un-augmented images, l2 1e-2, "
        "seconds), sgd (the paper's Appendix B.6: Nesterov SGD on the frozen encoder's features of "
        "cropped and flipped images, no weight decay; costs eval.sgd_epochs encoder passes over the "
        "training set), online (a linear head on detached features trained alongside pretraining, "
        "the reference code's way; nearly free)",
        choices=names.LINEAR_PROTOCOLS,
    )
    compare: bool = opt(
        False,
        "also score the encoder with the other linear protocols (online is then trained "
        "alongside): each protocol's top-1 under linear_top1_<protocol>",
    )
    sgd_epochs: int | None = opt(
        None, "sgd protocol: epochs (none: 100 on cifar10/cifar100, else 90, as in Appendix B.6)", low=1, high=10_000
    )
    sgd_batch: int = opt(
        4096,
        "sgd protocol: images a step (the training set's size when smaller); lr 0.1 x "
        "batch/256, cosine decay, Nesterov momentum 0.9 (the online head: the training batch)",
        low=1,
        high=1_000_000,
    )
    knn_k: int = opt(200, "neighbours of the weighted kNN probe", low=1, high=100_000)
    knn_t: float = opt(0.1, "temperature of the kNN weights", low=1e-4, high=100.0)
    random_init: bool = opt(True, "also probe the randomly initialised encoder as a baseline")
    batch_size: int = opt(512, "feature extraction batch size", low=1, high=1_000_000, identity=False)


@dataclass
class LogConfig:
    """Where the per-epoch rows go besides metrics.jsonl (and TensorBoard, when installed): never part of
    the cell id, since a logger cannot change a result."""

    wandb: bool = opt(
        False,
        "also log to Weights & Biases (pip install -e '.[wandb]'; on too when WANDB_PROJECT is "
        "set): one run per cell, resumed with it",
        identity=False,
    )
    wandb_project: str | None = opt(None, "W&B project (none: $WANDB_PROJECT, else ablation)", identity=False)


@dataclass
class CellConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    method: str = opt("simclr", "training method; `ablate methods` lists each one's parameters")
    method_args: dict | None = opt(None, "parameters of the method, e.g. {momentum: 0.99} for byol", args_of="method")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _as_float(value: int | str) -> float | str:
    """Ints widen; strings like '1e-3' (which PyYAML reads as text) become floats."""
    try:
        return float(value)
    except ValueError:
        return value


def _check_value(key: str, value: Any, hint: Any, meta: typing.Mapping) -> Any:
    """Type-check and range-check one leaf value; return it (ints widen to floats)."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    kinds = tuple(a for a in typing.get_args(hint) if a is not type(None)) if optional else (hint,)
    base = kinds[0] if len(kinds) == 1 else kinds
    if value is None and optional:
        return None
    if base is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        value = _as_float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{key}: expected {expected}{' or null' if optional else ''}, got {value!r}")
    if base is float and not math.isfinite(value):
        raise ValueError(f"{key}: expected a finite number, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(
            f"{key}: '{value}' is not allowed{did_you_mean(value, meta['choices'])}; "
            f"choose from: {', '.join(meta['choices'])}"
        )
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{key}: {value!r} is out of range [{low}, {high if high is not None else 'inf'}]")
    return value


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build a (nested) config dataclass, rejecting unknown keys and bad values by dotted name."""
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            full = [prefix + k for k in fields]
            raise ValueError(
                f"unknown config key '{prefix}{key}'{did_you_mean(prefix + key, full)}; choose from: {', '.join(full)}"
            )
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(typing.cast(type, hint), data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(prefix + name, data[name], hint, f.metadata)
    return cls(**kwargs)


def set_dotted(tree: dict, assignment: str) -> None:
    """Apply one `key.sub=value` override in place; the value is parsed as YAML (1e-3, true, null)."""
    if "=" not in assignment:
        raise ValueError(f"override '{assignment}' must look like key.sub=value, e.g. train.epochs=10")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override '{assignment}': '{part}' is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"override '{assignment}': the value is not valid YAML ({_yaml_problem(err)})") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line from a PyYAML error: what is wrong and where (its own message spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def merge(base: dict, update: dict) -> dict:
    """Deep-merge two nested dicts (update wins), returning a new dict."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


Check = Callable[[CellConfig], object]  # raises ValueError for a config that cannot be used


def validate(cfg: CellConfig, check: Check | None = None) -> CellConfig:
    """Cross-field checks (loss options, data set keys, devices), after ``check``: whoever builds a config
    for use passes registered.check_registered (augmentation specs parse, the method is registered),
    which this module cannot import."""
    if check is not None:
        check(cfg)
    if cfg.loss.semi_hard and cfg.loss.name not in names.SEMI_HARD_LOSSES:
        raise ValueError(f"loss.semi_hard: applies to {', '.join(names.SEMI_HARD_LOSSES)}, not '{cfg.loss.name}'")
    if cfg.data.name == "embedded" and cfg.data.per_class is not None:
        raise ValueError("data.per_class: the embedded set is generated; set data.n_train instead")
    if cfg.data.name == "folder" and not cfg.data.root:
        raise ValueError("data.root: required when data.name is 'folder' (root/train/<class>/*)")
    _validate_folder_keys(cfg.data)
    if not (cfg.train.device in ("auto", "cpu", "cuda") or cfg.train.device.startswith("cuda:")):
        raise ValueError(f"train.device: '{cfg.train.device}' is not allowed; choose from: auto, cpu, cuda, cuda:N")
    return cfg


FOLDER_KEYS = ("serve", "stored_size", "decode", "classes", "fingerprint")  # the data keys that only image folders read


def _validate_folder_keys(data: DataConfig) -> None:
    """The folder-only keys: set only for folders, a readable class list, a stored size >= data.size."""
    from .data.folders import class_names

    if data.name != "folder":
        for key in FOLDER_KEYS:
            default = next(f.default for f in dataclasses.fields(DataConfig) if f.name == key)
            if getattr(data, key) != default:
                raise ValueError(f"data.{key}: only for data.name=folder (data.name is '{data.name}')")
        return
    chosen = data.classes
    if isinstance(chosen, list) and (not chosen or not all(isinstance(c, (str, int)) for c in chosen)):
        raise ValueError(f"data.classes: expected a non-empty list of class folder names, got {data.classes!r}")
    class_names(data.classes)
    if data.stored_size is not None and data.stored_size < data.size:
        raise ValueError(
            f"data.stored_size: {data.stored_size} is below data.size {data.size}; "
            f"stored images are cropped down to data.size"
        )


def build_config(
    tree: dict | None = None, overrides: typing.Sequence[str] = (), check: Check | None = None
) -> CellConfig:
    """Resolve a config from a nested dict and `key=value` overrides; raises ValueError on any problem
    (``check``: see `validate`)."""
    tree = merge({}, tree or {})
    for assignment in overrides:
        set_dotted(tree, assignment)
    return validate(from_dict(CellConfig, tree), check)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with safe_load; a clear error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(
    path: str | Path | None = None, overrides: typing.Sequence[str] = (), check: Check | None = None
) -> CellConfig:
    """A cell config from an optional YAML file plus dotted overrides (``check``: see `validate`)."""
    tree = read_yaml(path) if path else {}
    try:
        return build_config(tree, overrides, check)
    except ValueError as err:
        raise ValueError(f"{path}: {err}" if path else str(err)) from None


def key_docs(
    cls: type = CellConfig, prefix: str = "", choices: Mapping[str, tuple] | None = None
) -> list[tuple[str, Any, str]]:
    """(dotted key, default, doc) for every leaf: the documented defaults. ``choices``: the allowed values
    of keys that a registry holds (registered.key_docs gives them), by dotted key."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:  # a section
            rows += key_docs(typing.cast(type, f.default_factory), f"{prefix}{f.name}.", choices)
        else:
            values = (choices or {}).get(prefix + f.name, f.metadata["choices"])
            doc = f.metadata["doc"] + (f" [{' | '.join(values)}]" if values else "")
            doc += "" if f.metadata["identity"] else " (not part of the cell id)"
            rows.append((prefix + f.name, f.default, doc))
    return rows
