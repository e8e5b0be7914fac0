"""Config: typed, validated, overridable; identity is a hash of the resolved config."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ablation.cli import main
from ablation.config import CellConfig, build_config, key_docs, load_config
from ablation.identity import signature
from ablation.registered import check_registered


def test_defaults_resolve_and_every_leaf_is_documented():
    cfg = build_config()
    assert isinstance(cfg, CellConfig)
    rows = key_docs()
    assert {key for key, _, _ in rows} >= {"train.epochs", "augment.views", "loss.temperature", "data.name"}
    assert all(doc.strip() for _, _, doc in rows)


def test_dotted_overrides_parse_yaml_values():
    cfg = build_config(
        {},
        [
            "train.epochs=3",
            "loss.temperature=1e-1",
            "loss.normalize=false",
            "optim.lr=null",
            "augment.views=crop+color(s=0.5)",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.loss.temperature == 0.1
    assert cfg.loss.normalize is False and cfg.optim.lr is None
    assert cfg.augment.views == "crop+color(s=0.5)"


def test_int_widens_to_float_but_bool_is_not_an_int():
    assert build_config({"loss": {"temperature": 1}}).loss.temperature == 1.0
    with pytest.raises(ValueError, match=r"train.epochs: expected int, got True"):
        build_config({"train": {"epochs": True}})


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"trian": {}}, r"unknown config key 'trian' \(did you mean 'train'\?\); choose from: data, augment"),
        ({"train": {"epoch": 3}}, r"unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\)"),
        ({"train": {"epochs": "ten"}}, r"train.epochs: expected int, got 'ten'"),
        ({"train": {"epochs": 0}}, r"train.epochs: 0 is out of range \[1, 100000\]"),
        (
            {"loss": {"name": "ntxent"}},
            r"loss.name: 'ntxent' is not allowed \(did you mean 'nt_xent'\?\); "
            r"choose from: nt_xent, nt_logistic, margin",
        ),
        ({"augment": {"views": "crop+colr"}}, r"augment.views: .*colr.*color"),
        ({"data": {"name": "folder"}}, r"data.root: required"),
        ({"train": {"device": "tpu"}}, r"train.device: 'tpu'"),
    ],
)
def test_bad_config_names_key_value_and_choices(tree, message):
    with pytest.raises(ValueError, match=message):
        build_config(tree, check=check_registered)


@pytest.mark.parametrize(
    "override, message",
    [
        ("augment.views=crop+colr", "augment.views: unknown augmentation 'colr' (did you mean 'color'?)"),
        ("augment.base=crop(scale_mn=0.5)", "augment.base: unknown 'crop' parameter 'scale_mn'"),
        ("method=byl", "method: unknown method 'byl' (did you mean 'byol'?)"),
        ("method_args={momentum: 0.5}", "method: method 'simclr' takes no parameters; got 'momentum'"),
    ],
)
def test_ablate_run_refuses_a_name_no_registry_holds_before_anything_runs(tmp_path, capsys, override, message):
    out = tmp_path / "cell"
    assert main(["run", "--set", override, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ablate run: error: {message}") and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow  # spawns a Python process: a fresh interpreter is the only place to see what is imported
def test_config_builds_without_importing_a_registry():
    code = (
        "import sys; from ablation.config import build_config; build_config(); "
        "loaded = {'ablation.augment', 'ablation.methods', 'torch'} & set(sys.modules); assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bad_override_syntax():
    with pytest.raises(ValueError, match=r"key.sub=value"):
        build_config({}, ["train.epochs"])


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text("train:\n  epochs: -1\n")
    with pytest.raises(ValueError, match=rf"{path}: train.epochs: -1 is out of range"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(path)


def test_signature_follows_resolved_values_not_spelling():
    a = build_config({"train": {"epochs": 20}})
    b = build_config({}, ["train.epochs=20"])
    assert signature(a) == signature(b) == signature(build_config())
    assert signature(build_config({}, ["train.seed=1"])) != signature(a)
    assert len(signature(a)) == 10


@pytest.mark.parametrize("value", [".nan", "nan", ".inf", "-.inf"])
def test_non_finite_floats_are_rejected(value):
    with pytest.raises(ValueError, match=r"loss.temperature: expected a finite number"):
        build_config({}, [f"loss.temperature={value}"])
    with pytest.raises(ValueError, match=r"optim.lr: expected a finite number"):
        build_config({}, [f"optim.lr={value}"])


def test_yaml_syntax_errors_are_one_line_naming_the_file_or_the_override(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ValueError, match=rf"^{path}: not valid YAML: .* at line \d+, column \d+$"):
        load_config(path)
    with pytest.raises(ValueError, match=r"^override 'train.epochs=\[1': the value is not valid YAML \(.*\)$"):
        build_config({}, ["train.epochs=[1"])


def test_keys_outside_the_cell_id_are_documented():
    docs = {key: doc for key, _, doc in key_docs()}
    outside = {key for key, doc in docs.items() if doc.endswith("(not part of the cell id)")}
    assert outside == {
        "data.workers",
        "data.download",
        "train.checkpoint_every",
        "eval.batch_size",
        "log.wandb",
        "log.wandb_project",
    }
