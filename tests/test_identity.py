"""The cell id is the canonical meaning of a config: spellings of one spec are one cell, keys that
cannot change a result are not part of it, anything that can change a result is."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ablation.augment import parse_spec
from ablation.config import build_config
from ablation.identity import canonical_spec, departures, settings, signature


def cell_id(*overrides: str) -> str:
    return signature(build_config({}, list(overrides)))


def test_spellings_of_one_spec_are_one_cell():
    ids = {cell_id(f"augment.views={spec}") for spec in
           ("crop+color", "crop + color", "crop+color(s=1.0)", "crop+color(s=1)", " crop()+color(s=1.0, p=1.0) ")}
    assert len(ids) == 1
    assert cell_id("augment.views=crop+color(s=0.5)") not in ids
    assert cell_id("augment.views=color+crop") not in ids
    assert cell_id("augment.base=none") == cell_id("augment.base=") == cell_id("augment.base= none ")


@pytest.mark.parametrize("override", ["data.workers=0", "data.download=true", "train.checkpoint_every=1",
                                      "eval.batch_size=64"])
def test_keys_that_cannot_change_a_result_do_not_change_the_id(override):
    assert cell_id(override) == cell_id()


@pytest.mark.parametrize("override", ["train.seed=1", "loss.temperature=0.2", "model.sync_bn=false",
                                      "train.device=cpu", "data.resident=never", "eval.knn_k=20", "method=byol",
                                      "loss.name=margin"])
def test_keys_that_can_change_a_result_change_the_id(override):
    assert cell_id(override) != cell_id()


def test_only_departures_from_the_defaults_are_hashed_so_a_new_option_keeps_old_ids():
    assert departures(build_config()) == {}
    assert departures(build_config({}, ["train.seed=1", "augment.views=crop + color(s=0.5)", "data.workers=3"])) \
        == {"train": {"seed": 1}, "augment": {"views": "crop+color(s=0.5)"}}
    assert cell_id("train.seed=0") == cell_id()  # a value set to its default is no departure
    # the methods' keys at their defaults (plain SimCLR) are no departure: SimCLR cells keep their ids
    assert cell_id("method=simclr", "method_args={}", "loss.semi_hard=false") == cell_id()
    assert departures(build_config({}, ["method=barlow_twins", "method_args={lambd: 0.5}"])) == {
        "method": "barlow_twins", "method_args": {"_revision": 1, "lambd": 0.5}}  # names.METHOD_REVISIONS
    assert cell_id("loss.name=margin", "loss.semi_hard=true") != cell_id("loss.name=margin")


def test_method_parameters_count_as_the_method_takes_them():
    byol = cell_id("method=byol")
    assert cell_id("method=byol", "method_args={momentum: 0.996}") == byol  # BYOL's default, spelled out
    assert cell_id("method=byol", "method_args={momentum: 0.99}") != byol
    assert cell_id("method=barlow_twins", "method_args={lambd: 1}") \
        == cell_id("method=barlow_twins", "method_args={lambd: 1.0}")


@pytest.mark.parametrize("spec", ["crop", "crop+color", " crop + color + blur ", "none", "", "rotate+noise+sobel"])
def test_the_torch_free_form_of_a_spec_without_parameters_is_the_canonical_one(spec):
    assert canonical_spec(spec) == parse_spec(spec).spec


def test_a_spec_without_parameters_is_canonical_without_torch():
    code = ("import sys; from ablation.identity import canonical_spec; "
            "assert canonical_spec('crop + color') == 'crop+color'; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_settings_spell_out_the_ops_of_a_spec():
    cfg = build_config({}, ["augment.views=crop+color(s=0.5)+blur"])
    flat = settings(cfg, ["augment.views"])
    assert flat["augment.views"] == "crop+color(s=0.5)+blur" and flat["loss.temperature"] == 0.5
    assert flat["augment.views.color.s"] == 0.5 and flat["augment.views.blur"] is True
    assert flat["augment.views.rotate"] is False and "augment.views.rotate.p" not in flat
    assert "data.workers" not in flat and "augment.views.color" not in settings(cfg)


FOLDER = ("data.name=folder", "data.root=photos")


@pytest.mark.parametrize("override", ["data.serve=stream", "data.serve=resident", "data.stored_size=64",
                                      "data.decode=device", "data.classes=[a,b]", "data.classes=imagenet100",
                                      "data.per_class=10"])
def test_folder_keys_set_change_a_folder_cells_id(override):
    assert cell_id(*FOLDER, override) != cell_id(*FOLDER)


def test_folder_keys_at_their_defaults_are_no_departure():
    """At the defaults a folder is a resident set at data.size with every class: the id of a config
    without these keys; other data sets never read them."""
    assert cell_id(*FOLDER, "data.serve=auto", "data.stored_size=null", "data.decode=workers",
                   "data.classes=null") == cell_id(*FOLDER)
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
