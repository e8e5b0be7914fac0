"""CPU speed of a `photos-cpu` cell's training step: images/s per core of two code trees, side by side.

The step timed is the cell's own (ablation.training's Training.setup, epoch and step, nothing rebuilt
here): the `photos-cpu` preset's model, optimiser and schedule, a
DeviceBatcher over a synthetic uint8 set (32 px, --batch images a step) and the cell's two views
(the preset's `crop+color`, --mode symmetric as the preset, asymmetric as the photo experiments).

Side by side (--baseline-tree DIR, a checkout of the code to compare against): every round runs one
child process per tree, in alternating order, each with PYTHONPATH set to its tree and --threads
torch threads; a child times --steps steps after --warmup and prints its images/s. The ratio of the
two children of a round cancels the machine's drift and the other processes' load (shared
machines); the median ratio over --rounds is the figure. Without --baseline-tree, this tree alone.
--set KEY=VALUE (repeatable) changes the cell config, e.g. `--set train.precision=bf16`: without
--baseline-tree the baseline is this tree without them (a setting's speed, side by side); with it, both
trees run with them (two trees compared under that setting).
--part views times the two views of each batch alone (the augmentation's share of the step).

--profile: one process, torch.profiler over --steps steps, the step split into each augmentation op,
the model's forward, the loss, backward, the optimiser and the rest (ms per step, share of the step).

    python benchmarks/cpu_speed.py --baseline-tree /tmp/pre [--threads 1 2] [--rounds 5] [--steps 8]
    python benchmarks/cpu_speed.py --set train.precision=bf16 [--threads 1 2] [--rounds 5]
    python benchmarks/cpu_speed.py --profile [--threads 1 2] [--mode asymmetric]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PRESET = "photos-cpu"
N_CLASSES = 10


def photos_cpu(mode: str, views: str, overrides: Sequence[str] = ()):
    """The preset's cell config, on synthetic data (the step never reads the data section), with
    --set's overrides."""
    from ablation.config import build_config, read_yaml

    tree = {k: v for k, v in read_yaml(REPO / "experiments" / "presets.yaml")[PRESET].items() if k != "slurm"}
    tree |= {"data": {"name": "embedded", "size": tree["data"]["size"]}, "augment": {"views": views, "mode": mode}}
    return build_config(tree, ["train.device=cpu", *overrides])


def training(cfg, images: torch.Tensor, labels: torch.Tensor):
    """The cell's own training (ablation.training.Training: its setup, epoch and step) on the set; a
    baseline tree from before that module gets the same objects from ablation.cell's parts."""
    from ablation.data import ImageSet

    try:
        from ablation.training import Training
    except ImportError:
        return _Assembled(cfg, images, labels)
    return Training.setup(cfg, ImageSet(images, labels, [str(c) for c in range(N_CLASSES)]), torch.device("cpu"))


class _Assembled:
    """Training's method, optimizer, views, epoch and step as a tree without ablation.training ran them
    (cell._run's loop, commit c492a40 and before): only to time such a tree as a baseline."""

    def __init__(self, cfg, images: torch.Tensor, labels: torch.Tensor):
        from ablation.augment import TwoViews
        from ablation.cell import build_model, build_optimisation, generator, train_step
        from ablation.data import DeviceBatcher

        self.cfg, self.generator, self.train_step = cfg, generator, train_step
        self.batcher = DeviceBatcher(images, labels, cfg.train.batch_size)
        self.method = build_model(cfg, torch.device("cpu"), N_CLASSES)
        self.optimizer, self.scheduler = build_optimisation(cfg, self.method, len(self.batcher))
        self.views = TwoViews(cfg.augment.views, base=cfg.augment.base, mode=cfg.augment.mode)

    def epoch(self, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        self.method.train()
        for step, (x, y) in enumerate(self.batcher.epoch(self.generator(torch.device("cpu"), 0, epoch))):
            yield step, x, y

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        steps = len(self.batcher)
        return self.train_step(
            self.method,
            self.method,
            self.views,
            x,
            y,
            self.generator(torch.device("cpu"), 0, epoch, step),
            self.optimizer,
            self.scheduler,
            self.cfg,
            (epoch * steps + step + 1, steps * self.cfg.train.epochs),
        )


class Cell:
    """A photos-cpu cell's training on a synthetic uint8 set of --batch x --steps images, and its loop
    over the steps of an epoch (`step` is an attribute, so --part views and the profiler can wrap it)."""

    def __init__(self, mode: str, views: str, batch: int, steps: int, seed: int = 0, overrides: Sequence[str] = ()):
        self.cfg = photos_cpu(mode, views, overrides)
        self.cfg.train.batch_size = batch
        images = torch.randint(
            0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
        )
        self.training = training(self.cfg, images, torch.arange(len(images)) % N_CLASSES)
        self.model, self.optimizer = self.training.method, self.training.optimizer
        self.step: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor] = self.training.step

    def views_only(self) -> None:
        """Make `step` draw the two views of the batch and nothing else (the augmentation's share)."""
        self.step = lambda x, y, epoch, step: self.model.views(
            self.training.views, x, torch.Generator().manual_seed(step)
        )[0].sum()

    def epoch(self, epoch: int) -> torch.Tensor:
        """The loss summed over one epoch of the cell's training."""
        loss_sum = torch.tensor(0.0)
        for step, x, y in self.training.epoch(epoch):
            loss_sum += self.step(x, y, epoch, step)
        return loss_sum


def child(args: argparse.Namespace) -> None:
    """Time --steps steps (or their views alone) after --warmup; one JSON line: images/s and the seconds."""
    torch.set_num_threads(args.threads)
    Cell(args.mode, args.views, args.batch, args.warmup, overrides=args.set).epoch(0)  # allocator, one-time set-ups
    cell = Cell(args.mode, args.views, args.batch, args.steps, overrides=args.set)
    if args.part == "views":
        cell.views_only()
    t0 = time.perf_counter()
    float(cell.epoch(0))
    seconds = time.perf_counter() - t0
    print(json.dumps({"images_per_s": args.batch * args.steps / seconds, "seconds": seconds}))


def run_child(tree: Path, overrides: list[str], threads: int, args: argparse.Namespace) -> float:
    """images/s of one child process whose `ablation` comes from `tree`, its config with `overrides`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--threads",
        str(threads),
        "--mode",
        args.mode,
        "--views",
        args.views,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--part",
        args.part,
        *(a for o in overrides for a in ("--set", o)),
    ]
    run = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if run.returncode:
        sys.exit(f"the child on {tree} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])["images_per_s"]


def compared(args: argparse.Namespace) -> dict[str, tuple[Path, list[str]]]:
    """The sides a run compares, each (its code tree, its config overrides): "new" this tree with --set;
    "baseline" --baseline-tree with --set, or this tree without --set, or none."""
    sides = {"new": (REPO, args.set)}
    if args.baseline_tree or args.set:
        sides["baseline"] = (Path(args.baseline_tree).resolve(), args.set) if args.baseline_tree else (REPO, [])
    return sides


def side_by_side(args: argparse.Namespace) -> None:
    sides = compared(args)
    print(
        f"{PRESET} {args.part}, views {args.views!r} {args.mode}, batch {args.batch}, {args.steps} steps after "
        f"{args.warmup}; "
        + ", ".join(f"{k}: tree {tree}" + "".join(f" --set {o}" for o in sets) for k, (tree, sets) in sides.items())
    )
    for threads in args.threads:
        rates: dict[str, list[float]] = defaultdict(list)
        load = [os.getloadavg()[0]]
        for round_ in range(args.rounds):
            for name in list(sides)[:: 1 if round_ % 2 == 0 else -1]:
                rates[name].append(run_child(*sides[name], threads, args) / threads)
            load.append(os.getloadavg()[0])
            print(
                f"  {threads} thread(s) round {round_ + 1}: "
                + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
                + " images/s per core",
                flush=True,
            )
        line = ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in rates.items())
        ratio = ""
        if "baseline" in rates:
            ratios = [a / b for a, b in zip(rates["new"], rates["baseline"])]
            ratio = (
                f"; ratio new/baseline: median {statistics.median(ratios):.2f} "
                f"(rounds {min(ratios):.2f}-{max(ratios):.2f})"
            )
        print(
            f"{threads} thread(s) per process: median images/s per core: {line}{ratio}; "
            f"load average {min(load):.1f}-{max(load):.1f} (1 min)",
            flush=True,
        )


@contextmanager
def labelled(obj: object, attr: str, label: str) -> Iterator[None]:
    """Wrap obj.attr in a profiler range named `label` while in the block."""
    original, own = getattr(obj, attr), attr in vars(obj)

    def wrapped(*a, **k):
        with torch.profiler.record_function(label):
            return original(*a, **k)

    setattr(obj, attr, wrapped)
    try:
        yield
    finally:
        if own:
            setattr(obj, attr, original)
        else:
            delattr(obj, attr)


def profile(args: argparse.Namespace) -> None:
    """The step's time by part: each augmentation op (draw and apply), forward, loss, backward, optimiser."""
    from contextlib import ExitStack

    from ablation.augment import REGISTRY

    warnings.filterwarnings("ignore", message=r"Seems like `optimizer.step\(\)` has been overridden")  # our label
    for threads in args.threads:
        torch.set_num_threads(threads)
        cell = Cell(args.mode, args.views, args.batch, args.steps, overrides=args.set)
        with ExitStack() as stack:
            for name, cls in REGISTRY.items():
                stack.enter_context(labelled(cls, "sample", f"aug.{name}.draw"))
                stack.enter_context(labelled(cls, "transform", f"aug.{name}.apply"))
            stack.enter_context(labelled(type(cell.model), "forward", "forward"))
            stack.enter_context(labelled(cell.model, "loss", "loss"))
            stack.enter_context(labelled(torch.Tensor, "backward", "backward"))
            stack.enter_context(labelled(cell.optimizer, "step", "optimiser"))
            stack.enter_context(labelled(cell, "step", "step"))
            Cell(args.mode, args.views, args.batch, args.warmup, overrides=args.set).epoch(0)  # as a child's warm-up
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                float(cell.epoch(0))
        ms = {
            e.key: e.cpu_time_total / 1000 / args.steps
            for e in prof.key_averages()
            if e.key in {"forward", "loss", "backward", "optimiser", "step"} or e.key.startswith("aug.")
        }
        step = ms.pop("step")
        nested = {
            "aug.color.apply": ("aug.jitter.apply", "aug.grayscale.apply"),
            "aug.color.draw": ("aug.jitter.draw", "aug.grayscale.draw"),
        }
        for outer, inner in nested.items():  # color runs jitter and grayscale: count them once
            if outer in ms:
                ms[outer] -= sum(ms.get(i, 0.0) for i in inner)
        aug = sum(v for k, v in ms.items() if k.startswith("aug."))
        print(
            f"\n{PRESET} step, {threads} thread(s), views {args.views!r} {args.mode}, batch {args.batch}: "
            f"{step:.1f} ms ({args.batch / step * 1000 / threads:.0f} images/s per core, under the profiler)"
        )
        print("| part | ms per step | share |\n|---|---|---|")
        rows = sorted(((k, v) for k, v in ms.items() if k.startswith("aug.")), key=lambda kv: -kv[1])
        rows += [("augmentation, all", aug)] + [(k, ms[k]) for k in ("forward", "loss", "backward", "optimiser")]
        rows.append(("the rest", step - aug - sum(ms[k] for k in ("forward", "loss", "backward", "optimiser"))))
        for key, value in rows:
            print(f"| {key} | {value:.1f} | {value / step:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-tree", help="a checkout of the code to compare against (side by side)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads per process")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one child per tree each)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per child")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=256, help="images per step (the preset's batch)")
    parser.add_argument(
        "--mode",
        default="symmetric",
        choices=("symmetric", "asymmetric"),
        help="two-view mode (symmetric: the preset's; asymmetric: the photo experiments')",
    )
    parser.add_argument("--views", default="crop+color", help="augmentation spec of the views")
    parser.add_argument(
        "--part",
        default="step",
        choices=("step", "views"),
        help="what is timed: the whole step, or the method's views of the batch alone",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a cell config override (repeatable): without --baseline-tree, the baseline is this tree "
        "without it; with it, both trees get it",
    )
    parser.add_argument("--profile", action="store_true", help="the step's time by part, this tree only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.threads = args.threads[0]
        child(args)
    elif args.profile:
        profile(args)
    else:
        side_by_side(args)


if __name__ == "__main__":
    main()
