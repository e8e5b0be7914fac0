"""ablation/names.py is the one list of each kind of name: the modules that implement a choice cover
exactly its names, and config validation, the CLI and analysis use the same objects."""

from __future__ import annotations

import subprocess
import sys

from ablation import config, launch, losses, names, optim, registered, status
from ablation.augment import TwoViews
from ablation.cli import build_parser
from ablation.data import serve, sources
from ablation.model import build_encoder, build_head


def _choices(section: type, key: str) -> tuple:
    return next(f.metadata["choices"] for f in config.dataclasses.fields(section) if f.name == key)


def test_config_choices_are_the_names():
    assert _choices(config.DataConfig, "name") is names.DATASETS
    assert _choices(config.ModelConfig, "encoder") is names.ENCODERS
    assert _choices(config.ModelConfig, "head") is names.HEADS
    assert _choices(config.LossConfig, "name") is names.LOSSES
    assert _choices(config.OptimConfig, "name") is names.OPTIMIZERS
    assert _choices(config.OptimConfig, "lr_scaling") is names.LR_SCALINGS
    assert _choices(config.AugmentConfig, "mode") is names.VIEW_MODES is TwoViews.MODES
    assert _choices(config.DataConfig, "serve") is names.SERVE_MODES
    assert _choices(config.DataConfig, "decode") is names.DECODERS


def test_every_named_choice_is_implemented():
    assert set(losses._PER_ANCHOR) == set(names.LOSSES)
    assert set(names.SEMI_HARD_LOSSES) < set(names.LOSSES)
    assert set(optim.BASE_LR) == set(names.LR_SCALINGS)
    assert sources.DATASETS is names.DATASETS
    assert {serve.serving(mode, 32, 10) for mode in names.SERVE_MODES} == {"resident", "stream"}  # auto: one
    for encoder in names.ENCODERS:  # build_encoder raises for a name it does not build
        assert build_encoder(encoder)[1] > 0
    for head in names.HEADS:
        assert build_head(head, 8, 8, 4).out_dim in (8, 4)
    assert launch.EXECUTORS is names.EXECUTORS
    grid_parser = build_parser()._subparsers._group_actions[0].choices["grid"]  # type: ignore[union-attr]
    assert next(a.choices for a in grid_parser._actions if a.dest == "executor") is names.EXECUTORS


def test_a_registry_is_the_list_of_its_names():
    from ablation.methods import REGISTRY

    assert config.CellConfig.method in REGISTRY
    listed = {key: doc for key, _, doc in registered.key_docs()}
    assert listed["method"].endswith(f"[{' | '.join(REGISTRY)}]")


def test_status_states_and_metrics_are_the_names():
    assert status.RETRYABLE is names.RETRYABLE and set(names.RETRYABLE) < set(names.STATES)
    assert names.PRIMARY_METRIC in names.ACCURACIES and set(names.ACCURACIES) < set(names.METRICS)


def test_names_import_nothing_heavy():
    code = "import sys, ablation.names; assert not {'torch', 'yaml', 'pandas'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
