"""Experiments expand into validated cells; every shipped experiment resolves on every preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ablation.cli import main
from ablation.grid import EXPERIMENTS_DIR, SHARED_FILES, load_experiment, preset_names
from ablation.names import pair_spec

SHIPPED = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml") if p.stem not in SHARED_FILES)
PRESETS = tuple(preset_names())
NEEDS = {"photos-cpu": ["data.root=photos"]}  # presets that need the user's data folder
# Dry runs that size a ResNet-50 step at 224 px per cell on the meta device (2-8 s each), or a ResNet step
# for 15+ distinct models (15-110 s each on two busy cores): the slow lane checks them; the embedded,
# photos-cpu and cifar10 presets of every other experiment stay in the fast lane.
COSTLY_DRY_RUNS = {(name, preset) for name in SHIPPED for preset in ("imagenet", "imagenet100")} | {
    ("head", "cifar10"),
    ("method_sensitivity", "cifar10"),
}
DRY_RUNS = [
    pytest.param(
        name, preset, id=f"{name}-{preset}", marks=[pytest.mark.slow] if (name, preset) in COSTLY_DRY_RUNS else []
    )
    for name in SHIPPED
    for preset in PRESETS
]


def write(tmp_path: Path, spec: dict, name: str = "exp") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_pairwise_is_all_ordered_pairs_with_singles_on_the_diagonal(tmp_path):
    path = write(tmp_path, {"grid": {"kind": "pairwise", "ops": ["crop", "color", "rotate"]}})
    exp = load_experiment(str(path))
    assert exp.kind == "pairwise" and exp.ops == ["crop", "color", "rotate"]
    assert [c.label for c in exp.cells] == [
        "crop",
        "crop+color",
        "crop+rotate",
        "color+crop",
        "color",
        "color+rotate",
        "rotate+crop",
        "rotate+color",
        "rotate",
    ]
    cell = exp.cells[1]
    assert cell.coords == {"first": "crop", "second": "color"}
    assert cell.config.augment.views == "crop+color"
    assert len({c.id for c in exp.cells}) == 9


def test_product_axes_zipped_keys_and_seeds(tmp_path):
    spec = {
        "grid": {
            "kind": "product",
            "seeds": [0, 1],
            "axes": {"loss.normalize,loss.temperature": [[True, 0.1], [False, 10]], "loss.name": ["nt_xent", "margin"]},
        }
    }
    exp = load_experiment(str(write(tmp_path, spec)))
    assert len(exp.cells) == 8 and exp.axes == ["loss.normalize", "loss.temperature", "loss.name"]
    first = exp.cells[0]
    assert first.label == "normalize=true,temperature=0.1,loss=nt_xent"
    assert first.config.loss.temperature == 0.1 and first.config.loss.normalize is True
    replicates = [c for c in exp.cells if c.label == first.label]
    assert [c.seed for c in replicates] == [0, 1] and len({c.id for c in replicates}) == 2


def test_cell_id_is_the_resolved_config_not_the_overrides(tmp_path):
    base = {"grid": {"kind": "pairwise", "ops": ["crop"]}}
    default_epochs = load_experiment(str(write(tmp_path, base))).cells[0]
    explicit = dict(base, cell={"train": {"epochs": default_epochs.config.train.epochs}})
    assert load_experiment(str(write(tmp_path, explicit, "b"))).cells[0].id == default_epochs.id
    changed = load_experiment(str(write(tmp_path, base, "c")), overrides=["train.epochs=1"]).cells[0]
    assert changed.id != default_epochs.id


def test_presets_and_slurm_overrides(tmp_path):
    spec = {
        "grid": {"kind": "pairwise", "ops": ["crop"]},
        "slurm": {"partition": "gpu"},
        "presets": {"tiny": {"train": {"epochs": 1}}},
    }
    exp = load_experiment(str(write(tmp_path, spec)), preset="tiny", overrides=["slurm.cpus_per_task=2"])
    assert exp.name == "exp-tiny" and exp.cells[0].config.train.epochs == 1
    assert exp.slurm.partition == "gpu" and exp.slurm.cpus_per_task == 2


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"kind": "pairwise", "ops": ["crop", "colr"]}}, r"cell 'crop\+colr'.*'colr'.*color"),
        ({"grid": {"kind": "pairwise", "ops": ["crop"]}, "cell": {"trian": {}}}, r"unknown config key 'trian'.*train"),
        (
            {"grid": {"kind": "pairwise", "ops": ["crop"]}, "cell": {"method": "byl"}},
            r"cell 'crop': method: unknown method 'byl' \(did you mean 'byol'\?\)",
        ),
        (
            {"grid": {"kind": "pairwise", "ops": ["crop"]}, "cell": {"train": {"epochs": "x"}}},
            r"train.epochs: expected int, got 'x'",
        ),
        (
            {"grid": {"kind": "product", "axes": {"loss.temperature": [0.5, -1]}}},
            r"loss.temperature: -1.0 is out of range",
        ),
        ({"grid": {"kind": "matrix"}}, r"grid.kind: 'matrix' is not allowed; choose from: pairwise, product"),
        (
            {"grid": {"kind": "pairwise", "ops": ["crop"]}, "slurm": {"partiton": "x"}},
            r"unknown config key 'slurm.partiton' \(did you mean 'slurm.partition'\?\)",
        ),
        ({"grid": {"kind": "pairwise", "ops": ["crop"]}, "paper": "fig5"}, r"paper: 'fig5'.*figure5"),
        ({"grid": {"kind": "pairwise", "ops": ["crop"]}, "grdi": {}}, r"unknown key 'grdi' \(did you mean 'grid'\?\)"),
        (
            {"grid": {"kind": "pairwise", "ops": "crop"}},
            r"grid.ops: a pairwise grid needs a non-empty list .*got 'crop'",
        ),
        ({"grid": {"kind": "pairwise", "ops": {"crop": 1}}}, r"grid.ops: a pairwise grid needs a non-empty list"),
        ({"grid": {"kind": "pairwise", "ops": ["crop", ""]}}, r"grid.ops: entry 2 \(''\) is not an augmentation spec"),
        ({"grid": {"kind": "pairwise", "ops": ["crop", None]}}, r"grid.ops: entry 2 \(None\) is not"),
        ({"grid": {"kind": "pairwise", "ops": ["crop"]}, "cell": "hello"}, r"cell: expected a mapping.*'hello'"),
        ({"grid": "pairwise"}, r"grid: expected a mapping of keys, got 'pairwise'"),
    ],
)
def test_invalid_experiments_name_file_key_and_choices(tmp_path, spec, message):
    path = write(tmp_path, spec)
    with pytest.raises(ValueError, match=rf"^{path}: .*{message}"):
        load_experiment(str(path))


def test_invalid_experiment_fails_before_anything_runs(tmp_path, capsys):
    path = write(tmp_path, {"grid": {"kind": "pairwise", "ops": ["crop", "colr"]}})
    assert main(["grid", str(path), "--executor", "local", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "did you mean 'color'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_unknown_experiment_name_suggests():
    with pytest.raises(FileNotFoundError, match="did you mean 'pairwise'"):
        load_experiment("pairwsie")


@pytest.mark.parametrize("name, preset", DRY_RUNS)
def test_every_shipped_experiment_validates_with_dry_run(name, preset, tmp_path, capsys):
    sets = [arg for kv in NEEDS.get(preset, []) for arg in ("--set", kv)]
    assert (
        main(["grid", name, "--preset", preset, "--dry-run", "--show-config", "--results", str(tmp_path), *sets]) == 0
    )
    out = capsys.readouterr().out
    exp = load_experiment(name, preset, NEEDS.get(preset, []))
    assert f"{len(exp.cells)} cells" in out and f"total: {len(exp.cells)} todo" in out
    shown = list(yaml.safe_load_all(out[out.index("--- #") :]))  # --show-config: every cell's resolved config
    assert shown == [c.config.to_dict() for c in exp.cells]


def test_show_config_without_dry_run_is_refused(capsys):
    assert main(["grid", "pairwise", "--show-config"]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_shipped_pairwise_is_the_papers_seven_by_seven():
    exp = load_experiment("pairwise")
    assert exp.ops == ["crop", "cutout", "color", "sobel", "noise", "blur", "rotate"]
    assert len(exp.cells) == 49 and exp.paper == "figure5"


@pytest.mark.parametrize("name", ["../../etc", "/tmp/abs", "a/b", "..", ".hidden", "with space", ""])
def test_experiment_names_must_be_one_simple_folder_name(tmp_path, name):
    path = write(
        tmp_path,
        {"name": name, "grid": {"kind": "pairwise", "ops": ["crop"]}}
        if name
        else {"name": "ok", "grid": {"kind": "pairwise", "ops": ["crop"]}, "presets": {"../x": {}}},
        "named",
    )
    preset = None if name else "../x"
    with pytest.raises(ValueError, match=rf"^{path}: (experiment|preset) name .* is not allowed: use letters"):
        load_experiment(str(path), preset)
    assert (
        main(
            ["grid", str(path), "--executor", "local", "--results", str(tmp_path / "r")]
            + (["--preset", preset] if preset else [])
        )
        == 2
    )
    assert not (tmp_path / "r").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["named.yaml"]


def test_yaml_syntax_error_in_an_experiment_names_the_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("grid: {kind: pairwise, ops: [crop\n")
    assert main(["grid", str(path), "--dry-run", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ablate grid: error: {path}: not valid YAML: "), err
    assert main(["grid", "pairwise", "--dry-run", "--results", str(tmp_path), "--set", "train.epochs=[1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "override 'train.epochs=[1': the value is not valid YAML" in err[0], err


@pytest.mark.parametrize("name", SHIPPED)
def test_cifar10_preset_uses_the_papers_colour_strength(name):
    """Appendix B.9: colour strength 0.5 on CIFAR-10, in every experiment that does not sweep it."""
    from ablation.augment import parse_spec

    exp = load_experiment(name, preset="cifar10")
    if "augment.views" in exp.axes:  # Table 1 sweeps the strength itself
        return
    strengths = {op.s for cell in exp.cells for op in parse_spec(cell.config.augment.views).ops if op.name == "color"}
    assert strengths == {0.5}


@pytest.mark.parametrize(
    "figure, error",
    [
        ({"kind": "heat"}, r"figure.kind: 'heat' is not allowed.*choose from: budget"),
        ({"kind": "budget", "x": "train.epochs"}, r"kind 'budget' needs hue, facet, compositions, singles"),
        (
            {
                "kind": "budget",
                "x": "train.epochs",
                "hue": "augment.views",
                "facet": "augment.base",
                "compositions": [],
                "singles": [],
            },
            r"figure.facet: 'augment.base' is not a swept key",
        ),
    ],
)
def test_figure_section_is_validated(tmp_path, figure, error):
    spec = {
        "grid": {"kind": "product", "axes": {"train.epochs": [1, 2], "augment.views": ["crop", "color"]}},
        "figure": figure,
    }
    with pytest.raises(ValueError, match=error):
        load_experiment(str(write(tmp_path, spec)))


def test_budget_experiment_tells_analysis_its_figure():
    exp = load_experiment("budget", "photos-cpu", ["data.root=photos"])
    described = exp.describe()["figure"]
    assert described["x"] == "train.epochs" and described["singles"] == ["crop", "color"]
    assert {c.config.data.per_class for c in exp.cells} == {1000}
    cifar = load_experiment("budget", "cifar10").describe()["figure"]
    assert cifar["compositions"] == ["crop+color(s=0.5)", "color(s=0.5)+crop"]


def _pairs(*ops: str) -> set[str]:
    return {pair_spec(a, b) for a in ops for b in ops}


SYMMETRIC = {"embedded": {"crop+color"}, "cifar10": {"crop+color(s=0.5)"}, "photos-cpu": {"crop+color"}}
STRENGTHS = {
    "crop+color(s=0.125)",
    "crop+color(s=0.25)",
    "crop+color(s=0.5)",
    "crop+color(s=1.0)",
    "crop+color(s=1.0)+blur",
    "crop+autoaugment",
}
TAKEN_AWAY = {"crop+color", "crop+color(gray_p=0.0)", "crop", "crop+grayscale(p=0.2)", "color"}
BUDGET = {"crop", "color", "crop+color", "color+crop"}
# (view modes, base, views) of every shipped experiment's cells on the small-image presets. The
# ImageNet presets give Figure 5 its shared first crop (tests/test_folders.py); none of it reaches these.
RESOLVED = {
    "pairwise": {
        p: ({"asymmetric"}, "none", _pairs("crop", "cutout", "color", "sobel", "noise", "blur", "rotate"))
        for p in ("embedded", "photos-cpu")
    }
    | {
        "cifar10": (
            {"asymmetric"},
            "none",
            _pairs("crop", "cutout", "color(s=0.5)", "sobel", "noise", "blur", "rotate"),
        )
    },
    "pairwise_check": {
        p: ({"asymmetric"}, "none", _pairs("crop", "cutout", "color", "blur")) for p in ("embedded", "photos-cpu")
    }
    | {"cifar10": ({"asymmetric"}, "none", _pairs("crop", "cutout", "color(s=0.5)", "blur"))},
    "budget": {p: ({"asymmetric", "symmetric"}, "none", BUDGET) for p in ("embedded", "photos-cpu")}
    | {
        "cifar10": (
            {"asymmetric", "symmetric"},
            "none",
            {"crop", "color(s=0.5)", "crop+color(s=0.5)", "color(s=0.5)+crop"},
        )
    },
    "color_strength": {p: ({"symmetric"}, "none", STRENGTHS) for p in SYMMETRIC},
    "method_sensitivity": {p: ({"symmetric"}, "none", TAKEN_AWAY) for p in ("embedded", "photos-cpu")}
    | {
        "cifar10": (
            {"symmetric"},
            "none",
            {"crop+color(s=0.5)", "crop+color(s=0.5,gray_p=0.0)", "crop", "crop+grayscale(p=0.2)", "color(s=0.5)"},
        )
    },
    "protocols": {p: ({"asymmetric"}, "none", BUDGET) for p in ("embedded", "photos-cpu")}
    | {"cifar10": ({"asymmetric"}, "none", {"crop", "color(s=0.5)", "crop+color(s=0.5)", "color(s=0.5)+crop"})},
    **{
        name: {p: ({"symmetric"}, "none", views) for p, views in SYMMETRIC.items()}
        for name in ("temperature", "head", "loss", "batch_epochs")
    },
}


def test_every_shipped_experiment_is_listed_in_resolved():
    assert sorted(RESOLVED) == SHIPPED


@pytest.mark.parametrize("name, preset", [(n, p) for n in RESOLVED for p in RESOLVED[n]])
def test_small_image_presets_resolve_each_experiments_base_and_views(name, preset):
    from ablation.augment import parse_spec

    modes, base, views = RESOLVED[name][preset]
    exp = load_experiment(name, preset, NEEDS.get(preset, []))
    augment = [c.config.augment for c in exp.cells]
    assert {a.mode for a in augment} == modes and {a.base for a in augment} == {base}
    assert {parse_spec(a.views).spec for a in augment} == {parse_spec(v).spec for v in views}
