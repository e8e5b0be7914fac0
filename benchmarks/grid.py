"""`ablate grid --dry-run` and `ablate status` on a generated 1,000-cell product experiment.

The experiment sweeps three keys with ten values each (10 x 10 x 10 cells). A third of the cells
get a finished result.json and a third a Slurm job.json (so `status` asks sacct about 333 jobs,
when sacct is installed); the rest are to do. Each command is timed in this process (imports
already paid, best of --reps) and as a fresh `ablate` subprocess (what a user waits for,
including the Python and torch imports); the cost of `import torch` alone is printed beside it.

    python benchmarks/grid.py [--reps 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from ablation import store
from ablation.cli import main
from ablation.grid import load_experiment

AXES = {
    "loss.temperature": [0.05 * (i + 1) for i in range(10)],
    "optim.weight_decay": [1e-6 * (i + 1) for i in range(10)],
    "model.out_dim": [16 * (i + 1) for i in range(10)],
}


def write_experiment(folder: Path) -> Path:
    path = folder / "big.yaml"
    spec = {
        "name": "big",
        "title": "1,000-cell benchmark",
        "cell": {"augment": {"views": "crop+color"}},
        "grid": {"kind": "product", "axes": AXES},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fake_states(path: Path, results: Path) -> None:
    """Finished results for a third of the cells, submitted Slurm jobs for another third."""
    exp = load_experiment(str(path))
    for i, cell in enumerate(exp.cells):
        d = results / exp.name / cell.id
        d.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            metrics = {"linear_top1": 0.5, "linear_top5": 0.9, "knn_top1": 0.4, "final_loss": 1.0}
            (d / store.RESULT).write_text(
                json.dumps({"status": "finished", "metrics": metrics, "wall_time_s": 60.0, "images_per_s": 5000.0})
            )
        elif i % 3 == 1:
            (d / store.JOB).write_text(
                json.dumps({"executor": "slurm", "job_id": f"999999_{i}", "submitted": time.time()})
            )


def best_of(reps: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def quiet_main(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def subprocess_seconds(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def run(folder: Path, reps: int) -> None:
    path, results = write_experiment(folder), folder / "results"
    fake_states(path, results)
    commands = {
        "grid --dry-run": ["grid", str(path), "--dry-run", "--results", str(results)],
        "status": ["status", str(path), "--results", str(results)],
    }
    ablate = str(Path(sys.executable).with_name("ablate"))
    if not Path(ablate).exists():
        ablate = shutil.which("ablate") or ablate
    torch_import = best_of(1, lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True))
    cells = len(load_experiment(str(path)).cells)
    print(f"experiment: {cells} cells ({' x '.join(str(len(v)) for v in AXES.values())}), {path}")
    print(f"load_experiment (expand + validate): {best_of(reps, lambda: load_experiment(str(path))):.3f} s")
    for name, argv in commands.items():
        inproc = best_of(reps, lambda argv=argv: quiet_main(argv))
        sub = best_of(reps, lambda argv=argv: subprocess_seconds([ablate, *argv], folder))
        print(f"ablate {name:<14} in-process {inproc:.3f} s   subprocess {sub:.3f} s")
    print(f"python -c 'import torch' alone: {torch_import:.3f} s")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the experiment here and keep it")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args.keep, args.reps)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), args.reps)


if __name__ == "__main__":
    cli()
