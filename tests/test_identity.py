"""The cell id is the canonical meaning of a config: spellings of one spec are one cell, keys that
cannot change a result are not part of it, anything that can change a result is."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from ablation import status, store
from ablation.augment import REGISTRY, Augmentation, param, parse_spec, register
from ablation.config import build_config
from ablation.data.fingerprint import identify
from ablation.grid import EXPERIMENTS_DIR as EXPERIMENTS
from ablation.grid import load_experiment
from ablation.identity import canonical_spec, departures, legacy_signature, settings, signature
from ablation.names import DONE, FINISHED, PRIMARY_METRIC, TODO
from ablation.registry import OP_RENAMES, Renames


def cell_id(*overrides: str) -> str:
    return signature(build_config({}, list(overrides)))


def test_spellings_of_one_spec_are_one_cell():
    ids = {
        cell_id(f"augment.views={spec}")
        for spec in (
            "crop+color",
            "crop + color",
            "crop+color(s=1.0)",
            "crop+color(s=1)",
            " crop()+color(s=1.0, p=1.0) ",
        )
    }
    assert len(ids) == 1
    assert cell_id("augment.views=crop+color(s=0.5)") not in ids
    assert cell_id("augment.views=color+crop") not in ids
    assert cell_id("augment.base=none") == cell_id("augment.base=") == cell_id("augment.base= none ")


@pytest.mark.parametrize(
    "override", ["data.workers=0", "data.download=true", "train.checkpoint_every=1", "eval.batch_size=64"]
)
def test_keys_that_cannot_change_a_result_do_not_change_the_id(override):
    assert cell_id(override) == cell_id()


@pytest.mark.parametrize(
    "override",
    [
        "train.seed=1",
        "loss.temperature=0.2",
        "model.sync_bn=false",
        "train.device=cpu",
        "data.resident=never",
        "eval.knn_k=20",
        "method=byol",
        "loss.name=margin",
    ],
)
def test_keys_that_can_change_a_result_change_the_id(override):
    assert cell_id(override) != cell_id()


def test_only_departures_from_the_defaults_are_hashed_so_a_new_option_keeps_old_ids():
    assert departures(build_config()) == {}
    assert departures(build_config({}, ["train.seed=1", "augment.views=crop + color(s=0.5)", "data.workers=3"])) == {
        "train": {"seed": 1},
        "augment": {"views": "crop+color(s=0.5)"},
    }
    assert cell_id("train.seed=0") == cell_id()  # a value set to its default is no departure
    # the methods' keys at their defaults (plain SimCLR) are no departure: SimCLR cells keep their ids
    assert cell_id("method=simclr", "method_args={}", "loss.semi_hard=false") == cell_id()
    assert departures(build_config({}, ["method=barlow_twins", "method_args={lambd: 0.5}"])) == {
        "method": "barlow_twins",
        "method_args": {"_revision": 1, "lambd": 0.5},
    }  # names.METHOD_REVISIONS
    assert cell_id("loss.name=margin", "loss.semi_hard=true") != cell_id("loss.name=margin")


def test_method_parameters_count_as_the_method_takes_them():
    byol = cell_id("method=byol")
    assert cell_id("method=byol", "method_args={momentum: 0.996}") == byol  # BYOL's default, spelled out
    assert cell_id("method=byol", "method_args={momentum: 0.99}") != byol
    assert cell_id("method=barlow_twins", "method_args={lambd: 1}") == cell_id(
        "method=barlow_twins", "method_args={lambd: 1.0}"
    )


@pytest.mark.parametrize("spec", ["crop", "crop+color", " crop + color + blur ", "none", "", "rotate+noise+sobel"])
def test_the_torch_free_form_of_a_spec_without_parameters_is_the_canonical_one(spec):
    assert canonical_spec(spec) == parse_spec(spec).spec


def test_a_spec_without_parameters_is_canonical_without_torch():
    code = (
        "import sys; from ablation.identity import canonical_spec; "
        "assert canonical_spec('crop + color') == 'crop+color'; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_settings_spell_out_the_ops_of_a_spec():
    cfg = build_config({}, ["augment.views=crop+color(s=0.5)+blur"])
    flat = settings(cfg, ["augment.views"])
    assert flat["augment.views"] == "crop+color(s=0.5)+blur" and flat["loss.temperature"] == 0.5
    assert flat["augment.views.color.s"] == 0.5 and flat["augment.views.blur"] is True
    assert flat["augment.views.rotate"] is False and "augment.views.rotate.p" not in flat
    assert "data.workers" not in flat and "augment.views.color" not in settings(cfg)


FOLDER = ("data.name=folder", "data.root=photos")


@pytest.mark.parametrize(
    "override",
    [
        "data.serve=stream",
        "data.serve=resident",
        "data.stored_size=64",
        "data.decode=device",
        "data.classes=[a,b]",
        "data.classes=imagenet100",
        "data.per_class=10",
    ],
)
def test_folder_keys_set_change_a_folder_cells_id(override):
    assert cell_id(*FOLDER, override) != cell_id(*FOLDER)


def test_folder_keys_at_their_defaults_are_no_departure():
    """At the defaults a folder is a resident set at data.size with every class: the id of a config
    without these keys; other data sets never read them."""
    assert cell_id(
        *FOLDER, "data.serve=auto", "data.stored_size=null", "data.decode=workers", "data.classes=null"
    ) == cell_id(*FOLDER)
    assert departures(build_config({}, list(FOLDER))) == {"data": {"name": "folder", "root": "photos"}}
    assert departures(build_config({}, [*FOLDER, "data.serve=stream"]))["data"]["serve"] == "stream"
    assert cell_id(*FOLDER, "data.workers=16") == cell_id(*FOLDER)


def test_the_protocol_key_keeps_the_ids_of_cells_scored_by_the_lbfgs_probe():
    """eval.linear=lbfgs (today's probe) is the default: naming it is no departure, so every cell finished
    before the key existed keeps its id; another protocol is another cell."""
    plain = build_config({}, ["augment.views=crop+color"])
    assert signature(build_config({}, ["augment.views=crop+color", "eval.linear=lbfgs"])) == signature(plain)
    assert signature(build_config({}, ["augment.views=crop+color", "eval.linear=sgd"])) != signature(plain)


def test_a_method_revision_makes_new_ids_for_that_method_only():
    """Barlow Twins' parameter groups changed (revision 1): its cells get ids that no finished cell of the
    old recipe has; other methods keep theirs."""
    bt, simclr = build_config({}, ["method=barlow_twins"]), build_config({}, [])
    assert departures(bt)["method_args"] == {"_revision": 1}
    assert "method_args" not in departures(simclr)


# ---- renamed ops and parameters keep finished cells ------------------------------------------------


def register_scale(name: str, factor: str) -> type:
    """A test op that scales the image, registered under `name` with its one parameter called `factor`."""
    return register(
        type(
            name,
            (Augmentation,),
            {
                "name": name,
                "doc": "scale the image",
                "__annotations__": {factor: "float"},
                factor: param(1.0, 0.0, 1.0, "the scale"),
                "transform": lambda self, x, params: x * getattr(self, factor),
            },
        )
    )


def grid_with(tmp_path, views: str):
    """The one-cell experiment `renamed` whose views are `views` (rewritten in place: one results folder)."""
    path = tmp_path / "renamed.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "cell": {"augment": {"views": views}},
                "grid": {"kind": "product", "axes": {"augment.mode": ["symmetric"]}},
            }
        )
    )
    return load_experiment(str(path))


@pytest.fixture
def scale_ops():
    """The test ops registered by a test, gone afterwards; canonical specs cached during the test forgotten
    (renames are fixed at import in real use; here the test makes one while it runs)."""
    canonical_spec.cache_clear()
    yield
    for name in ("test_scale", "test_shrink"):
        REGISTRY.pop(name, None)
    canonical_spec.cache_clear()


def test_a_renamed_op_and_parameter_keep_finished_cells_finished(tmp_path, scale_ops, monkeypatch):
    register_scale("test_scale", "amount")
    before = grid_with(tmp_path, "crop+test_scale(amount=0.5)")
    [cell] = before.cells
    folder = store.experiment_dir(tmp_path, before.name) / cell.id
    store.write_json(folder / store.RESULT, {"status": FINISHED, "metrics": {PRIMARY_METRIC: 0.5}, "wall_time_s": 1.0})
    assert [row.state for row in status.statuses(tmp_path, before)] == [DONE]

    # the rename: the op becomes test_shrink and its parameter factor; without an alias that is a new cell
    REGISTRY.pop("test_scale")
    shrink = register_scale("test_shrink", "factor")
    assert [row.state for row in status.statuses(tmp_path, grid_with(tmp_path, "crop+test_shrink(factor=0.5)"))] == [
        TODO
    ]

    monkeypatch.setitem(OP_RENAMES.names, "test_scale", "test_shrink")
    monkeypatch.setitem(OP_RENAMES.params, "test_scale", {"amount": "factor"})
    canonical_spec.cache_clear()
    after = grid_with(tmp_path, "crop+test_shrink(factor=0.5)")
    assert after.cells[0].id == cell.id
    assert [row.state for row in status.statuses(tmp_path, after)] == [DONE]
    # the old spelling builds the renamed op, in the same cell
    old = grid_with(tmp_path, "crop+test_scale(amount=0.5)")
    assert old.cells[0].id == cell.id and isinstance(parse_spec(old.cells[0].config.augment.views).ops[1], shrink)
    assert parse_spec("test_scale(amount=0.5)")(torch.ones(1, 3, 2, 2)).max() == 0.5
    with pytest.raises(ValueError, match="'test_scale' is an old name of 'test_shrink'"):
        register_scale("test_scale", "amount")


def test_renames_follow_chains_and_refuse_ambiguity():
    renames = Renames({"a": "b", "b": "c"}, {"a": {"x": "y"}})
    assert renames.current("a") == renames.current("b") == renames.current("c") == "c"
    assert renames.first("c") == renames.first("b") == "a" and renames.first("d") == "d"
    assert renames.current_param("c", "x") == "y" and renames.first_param("c", "y") == "x"
    with pytest.raises(ValueError, match="both renamed to 'c'"):
        Renames({"a": "c", "b": "c"}).first("c")
    with pytest.raises(ValueError, match="loop"):
        Renames({"a": "b", "b": "a"}).current("a")


def fake_folder(root, sizes=(10, 20, 30)):
    """root/{train,test}/{a,b}/<i>.jpg of these byte sizes (a fingerprint reads names and sizes, not pixels)."""
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i, size in enumerate(sizes):
                (root / split / name / f"{i}.jpg").write_bytes(b"x" * size)
    return root


def folder_cell_ids(root) -> list[str]:
    path = EXPERIMENTS / "pairwise.yaml"
    return [c.id for c in load_experiment(str(path), "photos-cpu", [f"data.root={root}"], False).cells]


def test_a_folder_cell_is_named_by_its_images_not_by_their_path(tmp_path, monkeypatch):
    """The same files at another path (a node-local copy) are the same cells; other files are other cells."""
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    here = folder_cell_ids(fake_folder(tmp_path / "scratch" / "photos"))
    assert folder_cell_ids(fake_folder(tmp_path / "node-local")) == here
    assert set(folder_cell_ids(fake_folder(tmp_path / "resized", sizes=(10, 20, 31)))).isdisjoint(here)
    (tmp_path / "node-local" / "train" / "a" / "3.jpg").write_bytes(b"x")  # an image added after it was remembered
    assert set(folder_cell_ids(tmp_path / "node-local")).isdisjoint(here)


def test_a_folder_that_is_not_here_keeps_the_fingerprint_last_seen_at_its_path_or_else_its_path(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    root = fake_folder(tmp_path / "photos")
    seen = folder_cell_ids(root)
    shutil.rmtree(root)  # a scratch folder purged: its finished cells are still found
    assert folder_cell_ids(root) == seen
    absent = build_config({}, ["data.name=folder", f"data.root={tmp_path / 'never'}"])
    assert identify(absent) == absent and legacy_signature(absent) is None  # the id holds the path, as before


def test_a_fingerprint_given_that_the_folder_contradicts_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    root = fake_folder(tmp_path / "photos")
    with pytest.raises(ValueError, match=r"^data.fingerprint: 'abc0' is not what the images under .* give"):
        identify(build_config({}, ["data.name=folder", f"data.root={root}", "data.fingerprint=abc0"]))
    with pytest.raises(ValueError, match=r"data.fingerprint: only for data.name=folder"):
        build_config({}, ["data.fingerprint=abc0"])


def test_a_torchvision_cell_is_named_by_its_data_set_not_by_its_root():
    assert (
        cell_id("data.name=cifar10", "data.root=data/cifar10")
        == cell_id("data.name=cifar10", "data.root=/x")
        == cell_id("data.name=cifar10")
    )


# Ids as they were before fingerprints (computed by that version): the ids finished cells are kept under.
LEGACY = {("folder", "/data/photos"): "a0445774a5", ("cifar10", "data/cifar10"): "612597526b"}


@pytest.mark.parametrize("name,root", LEGACY)
def test_the_legacy_id_is_the_id_before_fingerprints(name, root):
    cfg = build_config({}, [f"data.name={name}", f"data.root={root}", "loss.temperature=0.2"])
    if name == "folder":
        assert signature(cfg) == LEGACY[name, root]  # a folder not fingerprinted keeps its old id
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fingerprint="0123456789abcdef"))
    assert legacy_signature(cfg) == LEGACY[name, root] != signature(cfg)
