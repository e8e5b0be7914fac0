"""`ablate`: the command line. It parses arguments and calls the library; nothing more."""

from __future__ import annotations

import argparse
import errno
import json
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import store
from .grid import preset_names
from .names import DONE, EXECUTORS, FINISHED, INTERRUPTED, METRICS

if TYPE_CHECKING:
    from .grid import Cell, Experiment

EPILOG = """examples:
  ablate grid                                  # Figure 5 on the embedded data, on this machine
  ablate grid pairwise --preset cifar10 --executor slurm --set slurm.partition=gpu
  ablate status pairwise                       # one row per cell; exit 0 when all are done
  ablate status pairwise --watch               # refresh it until every cell has ended
  ablate run --set train.epochs=5 --out results/try   # one cell
  ablate augs                                  # the augmentation registry
  ablate methods                               # the training methods (simclr, supervised, byol, ...)
  ablate preview crop color sobel --out preview.png
"""


def _add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiment",
        nargs="?",
        default=None,
        help="experiment name in experiments/ (pairwise, color_strength, ...) or a YAML path (default: pairwise)",
    )
    p.add_argument("--preset", help=f"{' | '.join(preset_names())} (default: the file's preset)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a cell key (train.epochs=5) or a slurm key (slurm.partition=gpu); repeatable",
    )
    p.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results/)")


CONFIG_KEYS = "config keys (KEY default: doc):"


class _RunHelp(argparse.RawDescriptionHelpFormatter):
    """Lists the config keys after CONFIG_KEYS only when help is printed: the method names come from the
    method registry, which imports torch, and no other command should wait for that."""

    def add_text(self, text: str | None) -> None:
        super().add_text(f"{text}\n{_config_help()}" if text == CONFIG_KEYS else text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        description="Reproduce and extend SimCLR's data-augmentation ablations: run one cell, "
        "a whole grid locally or on Slurm, and turn the results into tables and figures.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("augs", help="list the augmentation registry (name, parameters, defaults, doc)")
    sub.add_parser("methods", help="list the training methods (name, parameters set with method_args, doc)")

    p = sub.add_parser("preview", help="draw a gallery of random draws of augmentation specs (like Figure 4)")
    p.add_argument("specs", nargs="+", metavar="SPEC", help='augmentation specs, e.g. crop "color(s=0.5)" crop+blur')
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--image", type=Path, help="image to augment (default: a built-in sample)")
    p.add_argument("--draws", type=int, default=6, help="random draws per spec (default: 6)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser(
        "run",
        formatter_class=_RunHelp,
        help="run one cell: pretraining (SimCLR or another method) + linear evaluation",
        description="Run one cell in this process. Rerun with the same --out to resume "
        "after an interruption; a finished --out is not re-run.",
        epilog=CONFIG_KEYS,
    )
    p.add_argument("config", nargs="?", type=Path, help="cell config YAML (default: the embedded defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=5; repeatable",
    )
    p.add_argument("--out", type=Path, default=Path("results/run"), help="cell folder (default: results/run)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="when --out holds another cell (another config), move its files to --out/attempts/ "
        "and start afresh (without it such a run is refused)",
    )

    p = sub.add_parser(
        "grid",
        help="expand an experiment into cells and run them (local or Slurm)",
        description="Run every cell of an experiment that is not done yet. Finished cells "
        "are skipped, queued or running ones are not submitted again, failed "
        "ones only with --retry. Locally the grid ends with collect, plot and "
        "report.",
    )
    _add_experiment_args(p)
    p.add_argument(
        "--executor", choices=EXECUTORS, default="auto", help="auto: slurm when sbatch is on PATH, else local"
    )
    p.add_argument("--dry-run", action="store_true", help="print the cells, their states and the cost; run nothing")
    p.add_argument(
        "--show-config",
        action="store_true",
        help="with --dry-run: also print every cell's resolved config (YAML, one document per cell), "
        "to audit a grid before paying for it",
    )
    p.add_argument("--retry", action="store_true", help="also rerun failed, cancelled and timed-out cells")
    p.add_argument("--wait", action="store_true", help="slurm: show the live status table until all cells end")
    p.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="local: cells run at once, or auto: as many as keep each GPU busy (ablation.pack; "
        "1 without a GPU) (default: auto)",
    )

    p = sub.add_parser("status", help="one row per cell with its state, progress and metric; exit 0 when all are done")
    _add_experiment_args(p)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--watch",
        action="store_true",
        help="redraw the table until every cell has ended (todo cells wait for a launch; Ctrl-C stops)",
    )
    shown.add_argument("--json", action="store_true", help="print one JSON document describing every cell")
    p.add_argument("--every", type=float, default=5.0, metavar="SECONDS", help="--watch: refresh period (default: 5)")

    for name, doc in (
        ("collect", "write results/<experiment>/summary.csv (+ replicate means)"),
        ("plot", "write the paper-style figures to results/<experiment>/figures/"),
        ("report", "write results/<experiment>/report.md beside the paper's findings"),
    ):
        p = sub.add_parser(name, help=doc)
        _add_experiment_args(p)
        if name != "collect":
            p.add_argument(
                "--reference",
                metavar="LABEL",
                help="the cell the per-class figure compares every other cell with "
                "(default: the grid's first finished cell)",
            )
        if name == "report":
            p.add_argument(
                "--latex",
                action="store_true",
                help=f"also write results/<experiment>/{store.TABLES_TEX}: "
                "the heatmap and results as booktabs tables for \\input",
            )
    return parser


def _workers(text: str) -> str | int:
    if text == "auto":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"'{text}' is not a number of workers >= 1 or 'auto'")


def _config_help() -> str:
    from .registered import key_docs

    return "\n".join(f"  {key} {default!r}: {doc}" for key, default, doc in key_docs())


def _print_registry(entries: list[dict]) -> None:
    """One line per entry: name, parameters with their defaults, doc."""
    width = max(len(entry["name"]) for entry in entries)
    for entry in entries:
        params = ", ".join(
            f"{p['name']}={p['default']:g}" if isinstance(p["default"], float) else f"{p['name']}={p['default']}"
            for p in entry["params"]
        )
        print(f"{entry['name']:<{width}} {params:<42} {entry['doc']}")


def cmd_augs(args: argparse.Namespace) -> int:
    from .augment import describe_registry

    _print_registry(describe_registry())
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import describe_methods

    _print_registry(describe_methods())
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from .augment import preview

    out = preview(args.specs, args.out, image=args.image, draws=args.draws, seed=args.seed)
    print(f"wrote {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .cell import Interrupt, Preempted, run_cell
    from .config import load_config
    from .data.fingerprint import identify
    from .local import interrupt_on_signals
    from .registered import check_registered

    cfg = identify(load_config(args.config, args.overrides, check_registered))
    interrupt = Interrupt()
    try:
        with interrupt_on_signals(interrupt):
            result = run_cell(cfg, args.out, interrupt, replace=args.replace)
    except Preempted as stop:
        print(f"stopped: {stop}. Run the same command again to resume.", file=sys.stderr)
        return 130
    m = result["metrics"]
    if result["status"] != FINISHED:
        print(f"{result['status']}: {result.get('reason')} (see {args.out / store.RESULT})", file=sys.stderr)
        return 1
    print(
        " ".join(f"{k}={m[k]:.4f}" for k in METRICS if m.get(k) is not None)
        + f" ({result['wall_time_s']:.0f}s, {result['images_per_s']} img/s)"
    )
    print(f"wrote {args.out / store.RESULT}")
    return 0


def _experiment(args: argparse.Namespace, check: bool = True) -> Experiment:
    from .grid import load_experiment

    return load_experiment(args.experiment, args.preset, args.overrides, check)


def cmd_grid(args: argparse.Namespace) -> int:
    from . import cost, sizing, status

    if args.show_config and not args.dry_run:
        print(
            "ablate grid: --show-config prints the cells' configs instead of running them: add --dry-run",
            file=sys.stderr,
        )
        return 2
    exp = _experiment(args)
    if args.dry_run:
        rows = status.statuses(args.results, exp)
        print(f"{exp.name}: {len(exp.cells)} cells ({exp.kind}, preset {exp.preset}) from {exp.path}")
        memory, allocation = sizing.report(exp)
        print(status.render(rows, limit=60, columns=memory))
        print(allocation)
        print(cost.estimate(exp, rows))
        for root in sorted({d.root for c in exp.cells if (d := c.config.data).name == "folder" and not d.fingerprint}):
            print(
                f"data.root {root} is not here and was never fingerprinted here: the ids above hold the path; "
                f"launched where the folder is, its cells get ids that name its images"
            )
        if args.show_config:
            print(resolved_configs(exp.cells), end="")
        return 0
    from . import launch, local

    workers = local.local_workers(args.workers, [c.config for c in exp.cells])
    outcome = launch.launch(args.results, exp, args.executor, args.retry, workers)
    if outcome["executor"] == "slurm" and not args.wait:
        print(f"submitted {len(outcome['submitted'])} jobs. Follow with: {follow_command(args, exp)}")
        return 0
    if INTERRUPTED in outcome.get("ran", {}).values():
        print("stopped by a signal; launch again to resume", file=sys.stderr)
        return 130
    if outcome["executor"] == "slurm" and _watch(args.results, exp) != 0:
        return 1
    return _finish(args.results, exp)


def resolved_configs(cells: Iterable[Cell]) -> str:
    """Every cell's resolved config as YAML documents, each headed by the cell's label and id."""
    return "".join(f"--- # {c.label} ({c.id})\n" + yaml.safe_dump(c.config.to_dict(), sort_keys=False) for c in cells)


def follow_command(args: argparse.Namespace, exp: Experiment) -> str:
    """The `ablate status` command line that shows the grid just launched (overrides included)."""
    argv = ["ablate", "status", str(exp.path), "--preset", exp.preset, "--results", str(args.results)]
    argv += [part for kv in args.overrides for part in ("--set", kv)]
    return shlex.join(argv)


def _watch(results: Path, exp: Experiment, every_s: float = 10.0) -> int:
    from . import status

    return status.watch(results, exp, every_s)


def _finish(results: Path, exp: Experiment) -> int:
    """Collect, plot and report, then say where the figures are."""
    import analysis

    from . import status

    folder = store.experiment_dir(results, exp.name)
    rows = status.statuses(results, exp)
    print(status.render(rows, limit=60))
    analysis.collect(folder)
    figures = analysis.plot(folder)
    report = analysis.report(folder)
    for path in figures:
        if path.suffix == ".png":
            print(f"figure: {path}")
    print(f"report: {report}")
    return 0 if all(r.state == DONE for r in rows) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from . import status

    exp = _experiment(args, check=False)  # cell ids need no torch import
    if args.watch:
        return status.watch(args.results, exp, args.every)
    snap = status.snapshot(args.results, exp)
    print(json.dumps(status.document(snap), indent=2) if args.json else status.table(snap))
    return 0 if all(r.state == DONE for r in snap.rows) else 1


def _analysis(name: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        import analysis

        folder = store.experiment_dir(args.results, _experiment(args).name)
        out = getattr(analysis, name)(folder, **({"reference": args.reference} if name != "collect" else {}))
        paths = out if isinstance(out, (list, tuple)) else [out]
        if getattr(args, "latex", False):
            paths = [*paths, analysis.write_latex(folder)]
        for path in paths:
            print(f"wrote {path}")
        return 0

    return command


COMMANDS = {
    "augs": cmd_augs,
    "preview": cmd_preview,
    "run": cmd_run,
    "grid": cmd_grid,
    "status": cmd_status,
    "methods": cmd_methods,
    "collect": _analysis("collect"),
    "plot": _analysis("plot"),
    "report": _analysis("report"),
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"ablate {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full results folder: one line, not a traceback
        print(f"ablate {args.command}: error: {os_problem(err)}", file=sys.stderr)
        return 2


def os_problem(err: OSError) -> str:
    """What an OSError means for the folder being written, naming the folder and the file."""
    if err.filename is None:
        return str(err)
    path = Path(err.filename)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{path.parent}: the disk is full ({err.strerror} while writing {path.name}); free some space"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"{path.parent}: cannot write there ({err.strerror}: {path.name}); "
            f"choose another folder (--results or --out)"
        )
    return f"{path}: {err.strerror}"


if __name__ == "__main__":
    sys.exit(main())
