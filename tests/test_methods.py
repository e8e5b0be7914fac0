"""Methods: each loss against a naive reference, the BYOL target and its schedule, every registered method
on the embedded data with an exact resume, the registry, and DDP (2 processes against one)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
import two_processes as two
from test_cell import TINY, StopAfter
from torch.nn.parallel import DistributedDataParallel

from ablation import store
from ablation.augment import TwoViews
from ablation.cell import Preempted, run_cell
from ablation.cli import main
from ablation.config import build_config
from ablation.methods import REGISTRY, Method, describe_methods, param, register
from ablation.methods.barlow_twins import barlow_twins_loss
from ablation.methods.byol import byol_loss, target_momentum
from ablation.methods.simsiam import simsiam_loss
from ablation.model import GlobalBatchNorm, global_batch_norm
from ablation.registered import check_registered
from ablation.training import initial_method

NAMES = sorted(REGISTRY)
SMALL_HEADS = ["method_args.predictor_hidden=16"]  # byol and simsiam: a predictor as small as the head


def rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()


# ---- losses against naive references -------------------------------------------------------


def naive_cosine(a, b):
    def norm(v):
        return torch.sqrt(sum(x * x for x in v))

    return sum(a[k] * b[k] for k in range(len(a))) / (norm(a) * norm(b))


def test_byol_loss_matches_naive_and_stops_the_target_gradient():
    p, z = rows(5, 4, 0), rows(5, 4, 1)
    want = sum(2 - 2 * naive_cosine(p[i], z[i]) for i in range(5)) / 5
    got = byol_loss(p, z)
    torch.testing.assert_close(got, want)
    (gp,) = torch.autograd.grad(got, p, retain_graph=True)
    torch.testing.assert_close(gp, torch.autograd.grad(want, p)[0])
    assert torch.autograd.grad(got, z, allow_unused=True)[0] is None


def test_simsiam_loss_matches_naive_and_stops_the_target_gradient():
    p, z = rows(6, 3, 2), rows(6, 3, 3)
    want = -sum(naive_cosine(p[i], z[i]) for i in range(6)) / 6
    got = simsiam_loss(p, z)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, p)[0], torch.autograd.grad(want, p)[0])
    assert simsiam_loss(z, z).item() == pytest.approx(-1.0)


def naive_barlow_twins(z1, z2, lambd, eps=1e-5):
    n, d = z1.shape

    def standardised(z, j):
        mean = sum(z[i, j] for i in range(n)) / n
        var = sum((z[i, j] - mean) ** 2 for i in range(n)) / n
        return [(z[i, j] - mean) / torch.sqrt(var + eps) for i in range(n)]

    a = [standardised(z1, j) for j in range(d)]
    b = [standardised(z2, j) for j in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            total = total + ((1 - c) ** 2 if i == j else lambd * c**2)
    return total


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins_loss_matches_naive(lambd):
    z1, z2 = rows(7, 4, 4), rows(7, 4, 5)
    got, want = barlow_twins_loss(z1, z2, lambd), naive_barlow_twins(z1, z2, lambd)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, (z1, z2)), torch.autograd.grad(want, (z1, z2)))


def test_barlow_twins_loss_is_zero_for_identical_decorrelated_views():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert barlow_twins_loss(z, z.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-4)


def test_supervised_loss_is_cross_entropy_of_the_labels():
    cfg = build_config({}, TINY + ["method=supervised"])
    torch.manual_seed(0)
    model = initial_method(cfg, torch.device("cpu"), n_classes=10)
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 3, 9, 3])
    logits = model.classifier(model.features(x))
    want = sum(-torch.log(torch.exp(logits[i, y[i]]) / torch.exp(logits[i]).sum()) for i in range(4)) / 4
    torch.testing.assert_close(model.loss(model((x,)), y), want)
    assert model.project(x) is None  # no projection: the per-epoch embedding statistics skip it


def test_supervised_trains_on_one_view_of_the_cell_augmentations():
    pair = TwoViews("color", base="crop", mode="symmetric")
    model = initial_method(build_config({}, TINY + ["method=supervised"]), torch.device("cpu"), 10)
    x = torch.rand(4, 3, 16, 16)
    (view,) = model.views(pair, x, torch.Generator().manual_seed(1))
    assert torch.equal(view, pair.one(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(view, x)
    assert model.n_views == 1


def test_simclr_is_the_encoder_and_head_of_before_methods():
    """z = head(encoder(x)) of both views as one batch, and a state dict of the encoder and head only, so
    a SimCLR checkpoint written before methods existed loads."""
    model = initial_method(build_config({}, TINY), torch.device("cpu"), 10).eval()
    x1, x2 = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    z = model((x1, x2))
    assert torch.equal(z, model.head(model.encoder(torch.cat([x1, x2]))))
    torch.testing.assert_close(model.project(x1), z[:3])  # a batch of 3, not 6: BLAS may sum in another order
    assert {k.split(".")[0] for k in model.state_dict()} == {"encoder", "head"}


@pytest.mark.parametrize("name", NAMES)
def test_global_batch_norm_reaches_every_network_of_a_method(name):
    model = initial_method(method_cell(name), torch.device("cpu"), 10)
    params = [id(p) for p in model.parameters()]
    converted = global_batch_norm(model)
    norms = [m for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, GlobalBatchNorm) for m in norms)
    assert [id(p) for p in converted.parameters()] == params  # the optimiser's parameters
    if name == "byol":
        assert any(isinstance(m, GlobalBatchNorm) for m in converted.target.modules())


# ---- BYOL's target network ------------------------------------------------------------------


def test_target_momentum_rises_from_base_to_one_on_a_cosine():
    assert target_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert target_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert target_momentum(0.99, 100, 100) == pytest.approx(1.0)


def test_byol_target_is_an_ema_of_the_online_network_and_not_trained():
    cfg = build_config({}, TINY + ["method=byol", "method_args={momentum: 0.9, predictor_hidden: 16}"])
    model = initial_method(cfg, torch.device("cpu"), 10)
    target = list(model.target.parameters())
    assert target and not any(p.requires_grad for p in target)
    assert any(k.startswith("target.") for k in model.state_dict())  # so the checkpoint carries it
    online = [p.detach().clone() for p in [*model.encoder.parameters(), *model.projector.parameters()]]
    with torch.no_grad():
        for p in [*model.encoder.parameters(), *model.projector.parameters()]:
            p.add_(1.0)
    before = [t.detach().clone() for t in target]
    model.update(step=0, total=10)  # momentum 0.9 at the start
    for t, b, o in zip(target, before, online, strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * (o + 1.0))
        assert torch.equal(t, b.lerp(o + 1.0, 1 - target_momentum(0.9, 0, 10)))  # the per-tensor update's numbers


# ---- every method on the embedded data: runs, resumes exactly -------------------------------


def method_cell(name: str, *extra: str):
    args = SMALL_HEADS if "predictor_hidden" in REGISTRY[name].params else []
    return build_config({}, TINY + [f"method={name}", "train.epochs=2"] + args + list(extra))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_method_runs_and_resumes_exactly(name, tmp_path):
    full = run_cell(method_cell(name), tmp_path / "full", show_progress=False)
    assert full["status"] == "finished" and full["config"]["method"] == name
    assert all(math.isfinite(v) for v in full["losses"])
    with pytest.raises(Preempted):
        run_cell(method_cell(name), tmp_path / "resumed", interrupt=StopAfter(5), show_progress=False)
    resumed = run_cell(method_cell(name), tmp_path / "resumed", show_progress=False)
    assert resumed["resumed_at"] == [{"epoch": 1, "step": 1}]
    assert resumed["metrics"] == full["metrics"] and resumed["losses"] == full["losses"]  # bit-exact on CPU
    rows = store.read_metrics(tmp_path / "full")  # embedding statistics of the method's projections
    assert len(rows) == 2 and all(("uniform" in r and "pos_sim" in r) == (name != "supervised") for r in rows)
    timing = ("images_per_s", "wall_s", "time")
    assert [{k: v for k, v in r.items() if k not in timing} for r in store.read_metrics(tmp_path / "resumed")] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows
    ]


@pytest.mark.slow
def test_ablate_run_takes_the_method(tmp_path, capsys):
    args = ["run", "--out", str(tmp_path), "--set", "method=simsiam"]
    args += [a for kv in TINY + ["train.epochs=1"] + SMALL_HEADS for a in ("--set", kv)]
    assert main(args) == 0
    assert "linear_top1=" in capsys.readouterr().out


# ---- the registry ---------------------------------------------------------------------------


@pytest.fixture
def toy_method():
    """A method registered for one test: its whole definition is one decorated class."""

    @register
    class Alignment(Method):
        name = "test_alignment"
        doc = "pull the two views' features together, with a variance floor (a toy VICReg)"
        floor: float = param(1.0, 0.0, 10.0, "target standard deviation of each feature")

        def forward(self, views):
            return self.features(torch.cat(views))

        def loss(self, outputs, labels):
            h1, h2 = outputs.float().chunk(2)
            return F.mse_loss(h1, h2) + F.relu(self.floor - h1.std(0)).mean()

    yield Alignment
    REGISTRY.pop("test_alignment", None)
    assert REGISTRY["byol"].__name__ == "BYOL"


def test_adding_a_method_is_one_registered_class(toy_method):
    cfg = build_config({}, TINY + ["method=test_alignment", "method_args.floor=0.5", "train.epochs=1"])
    assert initial_method(cfg, torch.device("cpu"), 10).floor == 0.5
    with pytest.raises(ValueError, match="'test_alignment' parameter 'flor' \\(did you mean 'floor'\\?\\)"):
        build_config({}, ["method=test_alignment", "method_args.flor=0.5"], check_registered)
    with pytest.raises(ValueError, match=r"test_alignment.*floor.*20.*0.0, 10.0"):
        build_config({}, ["method=test_alignment", "method_args.floor=20"], check_registered)
    with pytest.raises(ValueError, match="already registered"):

        @register
        class Again(Method):
            name = "byol"
            doc = "clash"


@pytest.mark.slow
def test_a_registered_method_trains_a_cell(toy_method, tmp_path):
    cfg = build_config({}, TINY + ["method=test_alignment", "method_args.floor=0.5", "train.epochs=1"])
    result = run_cell(cfg, tmp_path, show_progress=False)
    assert result["status"] == "finished"
    rows = store.read_metrics(tmp_path)  # no projection: the per-epoch row has no embedding statistics
    assert len(rows) == 1 and "loss" in rows[0] and "uniform" not in rows[0]


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match=r"method: unknown method 'byl' \(did you mean 'byol'\?\).*simsiam"):
        build_config({}, ["method=byl"], check_registered)


def test_help_lists_the_methods_and_ablate_methods_their_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    line = next(li for li in capsys.readouterr().out.splitlines() if li.strip().startswith("method "))
    for name in ("simclr", "supervised", "byol", "simsiam", "barlow_twins"):
        assert name in line
    assert main(["methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [li.split()[0] for li in out if li] == list(REGISTRY)
    assert "momentum=0.996" in next(li for li in out if li.startswith("byol"))
    described = {d["name"]: d for d in describe_methods()}
    assert [p["name"] for p in described["byol"]["params"]] == ["momentum", "predictor_hidden"]


# ---- DDP: two processes against one ---------------------------------------------------------

LOSSES = {
    "byol": lambda a, b: byol_loss(a, b) + byol_loss(b, a),
    "simsiam": lambda a, b: (simsiam_loss(a, b) + simsiam_loss(b, a)) / 2,
    "barlow_twins": lambda a, b: barlow_twins_loss(a, b, 0.1),
}


def _worker(rank: int, init_file: str, out: str) -> None:
    two.join(rank, init_file)
    results = {}
    for name, loss in LOSSES.items():
        _, grads = two.loss_and_grads(loss, two.shard(rank), seed=7, out_dim=3)
        two.rank_mean(grads)
        results[name] = grads
    # BYOL under DDP with global batch norm (its target's too): after a few steps on different shards,
    # both ranks hold the same target
    cfg = build_config({}, TINY + ["method=byol", "method_args={momentum: 0.5, predictor_hidden: 16}"])
    model = global_batch_norm(initial_method(cfg, torch.device("cpu"), 10))
    net = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pair = TwoViews("crop+color", mode="symmetric")
    for step in range(3):
        x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(100 * rank + step))
        loss = model.loss(net(model.views(pair, x, torch.Generator().manual_seed(rank))), None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update(step + 1, 3)
    flat = torch.cat([p.detach().flatten() for p in model.target.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(two.WORLD)]
    dist.all_gather(gathered, flat)
    results["byol_targets"] = gathered
    two.finish(rank, results, out)


@pytest.mark.slow
def test_two_processes_equal_one_process_and_targets_stay_in_sync(tmp_path: Path):
    results = two.spawn(_worker, tmp_path)[0]
    for name, loss in LOSSES.items():
        _, grads = two.loss_and_grads(loss, slice(None), seed=7, out_dim=3)
        torch.testing.assert_close(results[name], grads, msg=name)
    first, second = results["byol_targets"]
    assert torch.equal(first, second)
    byol = build_config({}, TINY + ["method=byol", "method_args={momentum: 0.5, predictor_hidden: 16}"])
    initial = initial_method(byol, torch.device("cpu"), 10)
    assert not torch.equal(first, torch.cat([p.flatten() for p in initial.target.parameters()]))
