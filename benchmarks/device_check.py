#!/usr/bin/env python3
"""Device check: how fast a cell trains on this GPU, next to the figures it should beat.

    python3 benchmarks/device_check.py [--data DIR|FILE.tar.xz] [--minutes 8] [--smoke]

Run from the repository root on a GPU machine; it needs no network and finishes within --minutes.
It prints, each beside what it compares against:
  1. two-view augmentation throughput (crop+color, symmetric) at 32 and 224 px, batch 512
     (benchmarks/augment.py: vs torchvision per sample on the CPU);
  2. benchmarks/train_step.py: the cell's training step vs lightly's SimCLR recipe on the same GPU;
  3. training images/s of K = 1, 2, 4 cifar10-preset cells at once on the GPU (ablation.pack), the
     augmentation's share of a step and the host-device synchronisations in a step;
  4. one cifar10-preset cell (ResNet-18, CIFAR stem, batch 512) on the real CIFAR-10 image folder
     (data.name=folder) for as many epochs as fit in about 3 minutes: seconds per epoch, images/s,
     linear and kNN top-1;
  5. time left: K = 1, 2, 4 small (embedded-preset) cells at once.
Goals on an H200: >= 12,500 images/s (<= 4 s per CIFAR-10 epoch at batch 512), >= 3x lightly,
augmentation < 10% of a step, K cells >= 1.5x the images/s of one.

kornia, submitit or lightly missing? They are installed from the wheels in .whl/ into a folder
under /tmp (no network). CIFAR-10 comes from ../shared/datasets/cifar10-jpeg, else from
.data/cifar10-jpeg.tar.xz. `bash benchmarks/device_prep.sh` makes both folders (on a machine with
network and the data); carry them along with the repository.

--smoke runs the same code paths on the CPU with tiny sizes (a small CNN, a generated image folder)
in under a minute; CI runs it (tests/test_device_check.py), without simplejpeg and with a K-cells
child made to crash or hang (DEVICE_CHECK_FAULT). lightly is skipped when not installed.

It cannot hang: a section that fails prints its error and the next one runs; a K-cells child that
fails, dies or outlasts the time stops its section at once; the summary prints before --minutes
runs out, whatever is still running then.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import re
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".whl"
SITE = Path(tempfile.gettempdir()) / "ablation-device-site"
NEEDED = {"kornia": "kornia", "submitit": "submitit", "lightly": "lightly.transforms"}  # name: what must import
CIFAR = (REPO.parent / "shared" / "datasets" / "cifar10-jpeg", REPO / ".data" / "cifar10-jpeg.tar.xz")
A100_S_PER_EPOCH, A100_IMAGES_S, LIGHTLY_S_PER_EPOCH = 18.2, 2_700, 26.0  # the references
GOAL_IMAGES_S, GOAL_VS_LIGHTLY, GOAL_AUG_SHARE, GOAL_K_GAIN = 12_500, 3.0, 0.10, 1.5
POLL_S = 0.2  # how soon a K-cells child that failed or died is noticed
SUMMARY_S = 5.0  # the summary prints this long before --minutes runs out, whatever is still running
FAULT_ENV = "DEVICE_CHECK_FAULT"  # test hook: 'crash' or 'hang' makes the second child of K cells do so
CHILDREN: list = []  # the K-cells processes started, ended when time runs out
CELL = {
    "augment.views": "crop+color(s=0.5)",
    "augment.mode": "symmetric",
    "data.name": "folder",
    "data.download": False,
    "eval.random_init": False,
}
SMOKE_CELL = {
    "model.encoder": "small_cnn",
    "model.width": 8,
    "model.head_hidden": 64,
    "model.out_dim": 32,
    "train.batch_size": 32,
    "eval.knn_k": 20,
    "eval.batch_size": 64,
}


def _prepend_path(folder: Path) -> None:
    """On sys.path here, and on PYTHONPATH for the processes this one starts."""
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


def _usable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - missing, or missing one of its own needs
        return False


def _dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _needs(wheel: Path) -> list[str]:
    """The distributions a wheel requires (its METADATA's Requires-Dist, extras left out)."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [
        _dist(re.split(r"[\s;<>=!~\[(]", line.split(":", 1)[1].strip())[0])
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]


def wheels_for(names: list[str], folder: Path) -> list[Path]:
    """The wheels in `folder` of `names` and of what they need, as far as `folder` has them."""
    have = {_dist(w.name.split("-")[0]): w for w in folder.glob("*.whl")}
    chosen: dict[str, Path] = {}
    todo = [_dist(n) for n in names]
    while todo:
        name = todo.pop()
        if name in have and name not in chosen:
            chosen[name] = have[name]
            todo += _needs(have[name])
    return sorted(chosen.values())


def bootstrap(wheels: Path) -> list[str]:
    """The repository on the path, and the packages that do not import installed from `wheels`
    (no index) into SITE: returns those still missing."""
    _prepend_path(REPO)
    if SITE.is_dir():
        _prepend_path(SITE)
    missing = [name for name, module in NEEDED.items() if not _usable(module)]
    chosen = wheels_for(missing, wheels) if missing and wheels.is_dir() else []
    if chosen:
        import subprocess

        print(f"installing for {', '.join(missing)}: {', '.join(w.name for w in chosen)} into {SITE}", flush=True)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--upgrade",
                "--target",
                str(SITE),
                *map(str, chosen),
            ],
            capture_output=True,
            text=True,
        )
        if run.returncode:
            print(f"could not install them: {(run.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
        if str(SITE) not in sys.path:
            _prepend_path(SITE)
        importlib.invalidate_caches()
    return [name for name, module in NEEDED.items() if not _usable(module)]


# ---------------------------------------------------------------- data


def cifar_root(given: Path | None, scratch: Path) -> Path:
    """The CIFAR-10 image folder: `given` or the default places; a .tar.xz is unpacked into `scratch`."""
    for place in [given] if given else CIFAR:
        if place.is_dir() and (place / "train").is_dir():
            return place
        if place.is_file() and place.name.endswith(".tar.xz"):
            with tarfile.open(place) as tar:
                top = tar.getmembers()[0].name.split("/")[0]
                if not (scratch / top / "train").is_dir():
                    tar.extractall(scratch, filter="data")
            return scratch / top
    sys.exit(
        f"no CIFAR-10 image folder at {', '.join(map(str, [given] if given else CIFAR))}; "
        f"run `bash benchmarks/device_prep.sh` where ../shared has it and carry .data/"
    )


def tiny_folder(scratch: Path, per_class: int = 16) -> Path:
    """A generated image folder (the embedded set as JPEG files) for --smoke: the folder code path, in seconds."""
    from torchvision.io import write_jpeg

    from ablation.data import load_dataset

    root = scratch / "tiny-folder"
    train, test = load_dataset("embedded", size=32, n_train=10 * per_class, n_test=40, seed=0)
    for split, data in (("train", train), ("test", test)):
        for i, (image, label) in enumerate(zip(data.images, data.labels.tolist())):
            folder = root / split / data.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            write_jpeg(image, str(folder / f"{i:04d}.jpg"), quality=95)
    return root


# ---------------------------------------------------------------- sections


class Report:
    """Sections with their time, failures kept (the check goes on), and a deadline: SUMMARY_S before
    it, a watchdog prints the summary and ends the check (and its children) wherever it is."""

    def __init__(self, minutes: float):
        self.start, self.deadline = time.monotonic(), time.monotonic() + 60 * minutes
        self.failed: list[str] = []
        self.summary: list[str] = []
        self.device, self.current = "?", "start"
        self._printed = threading.Lock()
        self._watchdog = threading.Timer(max(0.0, self.left() - SUMMARY_S), self._times_up)
        self._watchdog.daemon = True
        self._watchdog.start()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _times_up(self) -> None:
        self.failed.append(f"{self.current} (stopped: --minutes ran out)")
        print(f"\nFAILED: {self.current}: still running {SUMMARY_S:.0f} s before --minutes ran out", flush=True)
        _stop(CHILDREN)
        self.finish()
        os._exit(1)

    def finish(self) -> int:
        """The summary, printed once (by the main thread at the end or by the watchdog)."""
        if not self._printed.acquire(blocking=False):
            time.sleep(SUMMARY_S)  # the watchdog prints it and ends the process
            return 1
        self._watchdog.cancel()
        lines = [f"\n== summary ({time.monotonic() - self.start:.0f} s, {self.device})", *self.summary]
        if self.failed:
            lines.append(f"failed sections: {'; '.join(self.failed)}")
        print("\n".join(lines), flush=True)
        return 1 if self.failed else 0

    @contextlib.contextmanager
    def section(self, title: str) -> Iterator[None]:
        t0 = time.monotonic()
        self.current = title
        print(f"\n== {title} (at {t0 - self.start:.0f} s)", flush=True)
        try:
            yield
        except Exception as err:  # noqa: BLE001 - report and go on: one broken part must not hide the others
            self.failed.append(title)
            traceback.print_exc()
            print(f"FAILED: {title}: {type(err).__name__}: {err}", flush=True)
        print(f"-- {time.monotonic() - t0:.1f} s", flush=True)

    def note(self, line: str) -> None:
        print(line, flush=True)
        self.summary.append(line)


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell_config(root: Path, smoke: bool, epochs: int = 1, device: str = "auto"):
    """The cifar10 preset on the image folder `root` (tiny sizes with --smoke)."""
    from ablation.config import build_config, read_yaml
    from ablation.grid import EXPERIMENTS_DIR

    preset = read_yaml(EXPERIMENTS_DIR / "presets.yaml")["cifar10"]
    keys = {
        **CELL,
        "data.root": str(root),
        "train.epochs": epochs,
        "train.device": device,
        **(SMOKE_CELL if smoke else {}),
    }
    return build_config(preset, [f"{k}={v}" for k, v in keys.items()])


def embedded_config(device: str):
    """The embedded preset: the small cells of a laptop grid."""
    from ablation.config import build_config, read_yaml
    from ablation.grid import EXPERIMENTS_DIR

    preset = read_yaml(EXPERIMENTS_DIR / "presets.yaml")["embedded"]
    return build_config(preset, [f"train.device={device}", "augment.mode=symmetric"])


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _throughput(
    config: dict, warmup: int, steps: int, threads: int, barrier, queue, details: bool, wait_s: float, fault: str
) -> None:
    """One of K processes: a cell's training steps; after `warmup` steps (compilation included) all K
    start together, and each reports when its `steps` timed steps began and ended. A failure is
    reported on the queue as one line (the parent stops the others at once); `fault` (the test hook
    FAULT_ENV) makes this child crash or hang before the barrier."""
    try:
        _measure(config, warmup, steps, threads, barrier, queue, details, wait_s, fault)
    except BaseException as err:  # noqa: BLE001 - whatever it is, the parent must hear of it now
        traceback.print_exc()
        queue.put({"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"})
        raise SystemExit(1) from None


def _measure(
    config: dict, warmup: int, steps: int, threads: int, barrier, queue, details: bool, wait_s: float, fault: str
) -> None:
    import warnings

    import torch

    torch.set_num_threads(threads)

    from ablation.config import CellConfig, from_dict
    from ablation.data import load_data
    from ablation.training import Training, generator, resolve_device

    cfg = from_dict(CellConfig, config)
    device = resolve_device(cfg.train.device)
    train, _ = load_data(cfg)
    training = Training.setup(cfg, train, device)  # a cell's own setup and step (ablation.training)
    step = training.stepper()
    for _ in range(warmup):
        step()
    _sync(device)
    if fault == "crash":
        os._exit(3)  # no exception, no message: only the exit code tells
    if fault == "hang":
        time.sleep(10**6)
    barrier.wait(timeout=wait_s)
    t0 = time.time()
    for _ in range(steps):
        step()
    _sync(device)
    out = {"images": steps * cfg.train.batch_size, "t0": t0, "t1": time.time()}
    if details:
        _, x, _ = next(training.epoch(0))
        t = time.perf_counter()
        for i in range(steps):
            training.views(x, generator(device, 1, 0, i))
        _sync(device)
        out["augment_s"] = (time.perf_counter() - t) / steps
        out["step_s"] = (out["t1"] - t0) / steps
        if device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                for _ in range(3):
                    step()
                torch.cuda.set_sync_debug_mode("default")
            out["syncs"] = sum("synchroniz" in str(w.message) for w in caught)
            out["sync_sources"] = sorted({str(w.message).splitlines()[0][:120] for w in caught})
    queue.put(out)


def _stop(procs: list) -> None:
    """Ends the given child processes now (the check has what it can get from them)."""
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(timeout=10)


def _silent_failure(procs: list, missing: int, deadline: float) -> Exception | None:
    """Why the children's results will not all come, seen from outside: one died, all ended with
    results missing, or time is up."""
    dead = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
    if dead:
        return RuntimeError(f"cell process {dead[0][0]} of {len(procs)} died (exit code {dead[0][1]})")
    if all(p.exitcode == 0 for p in procs):
        return RuntimeError(f"{missing} cell process(es) ended without a result")
    if time.monotonic() > deadline:
        return TimeoutError(f"{missing} of {len(procs)} cell process(es) still running at the time limit")
    return None


def _collect(procs: list, barrier, queue, deadline: float) -> list[dict]:
    """Every child's result; at the first child that fails, dies or outlasts `deadline` (time.monotonic),
    the barrier is broken, the others are ended and one line says which and why."""
    import queue as queues

    results: list[dict] = []
    try:
        while len(results) < len(procs):
            try:
                out = queue.get(timeout=POLL_S)
            except queues.Empty:
                failure = _silent_failure(procs, len(procs) - len(results), deadline)
                if failure is None:
                    continue
                try:  # what a child sent just before it ended says more than its exit code
                    out = queue.get(timeout=POLL_S)
                except queues.Empty:
                    raise failure from None
            if "error" in out:
                raise RuntimeError(f"a cell process failed: {out['error']}")
            results.append(out)
    except BaseException:
        barrier.abort()  # a child waiting there goes on at once (and fails)
        raise
    finally:
        _stop(procs)
    return results


def together(config: dict, k: int, warmup: int, steps: int, deadline: float, details: bool = False) -> dict:
    """K processes training the same kind of cell at once; aggregate images/s over the common window.
    Returns by `deadline` (time.monotonic), or raises as soon as one process fails."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    barrier, queue = spawn.Barrier(k), spawn.Queue()
    threads = max(1, (os.cpu_count() or 1) // k)
    wait_s = max(1.0, deadline - time.monotonic())
    fault = os.environ.get(FAULT_ENV, "")
    procs = [
        spawn.Process(
            target=_throughput,
            args=(config, warmup, steps, threads, barrier, queue, details and i == 0, wait_s, fault if i == 1 else ""),
        )
        for i in range(k)
    ]
    CHILDREN.extend(procs)
    for p in procs:
        p.start()
    results = _collect(procs, barrier, queue, deadline)
    window = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    first = next((r for r in results if "step_s" in r), {})
    return {"images_s": sum(r["images"] for r in results) / window, **first}


def k_cells(
    report: Report, title: str, config, ks: list[int], warmup: int, steps: int, rates: dict[int, float]
) -> None:
    """Aggregate images/s for each K into `rates` (those measured stay in the summary when a later K
    fails), and (K = 1) the augmentation's share and the syncs of a step."""
    try:
        _k_cells(report, title, config, ks, warmup, steps, rates)
    finally:
        if rates:
            report.note(
                f"{title} together: "
                + ", ".join(f"K={k} {r:,.0f} images/s ({r / rates[ks[0]]:.2f}x)" for k, r in rates.items())
                + f" (goal: K cells >= {GOAL_K_GAIN}x one)"
            )


def _section_deadline(report: Report) -> float:
    """When K cells must be done: half the time left before the summary, so that cells which never end
    (a child stuck before its barrier) leave the other half to the sections after them."""
    now = time.monotonic()
    return now + max(1.0, (report.deadline - 2 * SUMMARY_S - now) / 2)


def _k_cells(
    report: Report, title: str, config, ks: list[int], warmup: int, steps: int, rates: dict[int, float]
) -> None:
    for k in ks:
        out = together(config.to_dict(), k, warmup, steps, _section_deadline(report), details=k == ks[0])
        rates[k] = out["images_s"]
        gain = f", {rates[k] / rates[ks[0]]:.2f}x K={ks[0]}" if k != ks[0] else ""
        print(f"{title}, K={k} at once: {rates[k]:,.0f} images/s together{gain}", flush=True)
        if "augment_s" in out:
            share = out["augment_s"] / out["step_s"]
            report.note(
                f"{title}, augmentation: {1e3 * out['augment_s']:.1f} ms of a "
                f"{1e3 * out['step_s']:.1f} ms step "
                f"= {100 * share:.1f}% (goal < {100 * GOAL_AUG_SHARE:.0f}%)"
            )
            if "syncs" in out:
                report.note(
                    f"{title}, host-device synchronisations in 3 training steps: {out['syncs']} (goal 0)"
                    + (f": {'; '.join(out['sync_sources'])}" if out["syncs"] else "")
                )
            else:
                print(
                    "host-device synchronisations: counted on CUDA only (tests/test_accel.py checks the "
                    "step on the CPU)"
                )


def one_cell(report: Report, cfg, out: Path) -> None:
    from ablation.cell import run_cell

    result = run_cell(cfg, out, show_progress=True)
    if result["status"] != "finished":
        raise RuntimeError(f"cell {result['status']}: {result.get('reason')}")
    epoch_s, m = result["epoch_s"], result["metrics"]
    steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    per_epoch = result["images_per_s"] * result["train_time_s"] / len(epoch_s)  # training images per epoch
    print(
        f"epochs: {result['epochs_done']}, seconds per epoch: first {epoch_s[0]:.1f} (compilation included), "
        f"then median {steady:.2f}; wall {result['wall_time_s']:.0f} s with data and probes"
    )
    report.note(
        f"cifar10 cell ({cfg.model.encoder}, batch {cfg.train.batch_size}, {result['device']}): "
        f"{steady:.2f} s/epoch = {per_epoch / steady:,.0f} images/s (goal <= {50_000 / GOAL_IMAGES_S:.0f} s, "
        f">= {GOAL_IMAGES_S:,}; A100 single-file SimCLR {A100_S_PER_EPOCH} s = {A100_IMAGES_S:,} images/s, "
        f"lightly's benchmark ~{LIGHTLY_S_PER_EPOCH:.0f} s)"
    )
    report.note(
        f"cifar10 cell after {result['epochs_done']} epochs: linear top-1 {m['linear_top1']:.4f}, "
        f"top-5 {m['linear_top5']:.4f}, kNN top-1 {m['knn_top1']:.4f}, final loss {m['final_loss']:.4f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="CIFAR-10 image folder or .tar.xz of it (default: ../shared, .data/)")
    parser.add_argument("--minutes", type=float, default=8.0, help="finish within this many minutes")
    parser.add_argument("--cell-s", type=float, default=180.0, help="training time of the cifar10 cell")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the code paths, in under a minute")
    parser.add_argument(
        "--wheels", type=Path, default=WHEELS, help="where missing packages' wheels are (default .whl/)"
    )
    args = parser.parse_args(argv)
    report = Report(args.minutes)
    try:
        _check(args, report)
    finally:
        code = report.finish()
    return code


def _check(args: argparse.Namespace, report: Report) -> None:
    missing = bootstrap(args.wheels)
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here; use --smoke for the CPU check")
    name = report.device = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"device check on {name}, torch {torch.__version__}, python {sys.version.split()[0]}"
        + (f"; not installed: {', '.join(missing)}" if missing else ""),
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="device-check-"))
    if args.smoke:
        os.environ["ABLATION_CACHE"] = str(scratch / "cache")  # no decoded copies left behind
    smoke = args.smoke
    root = tiny_folder(scratch) if smoke else cifar_root(args.data, scratch)
    print(f"image folder: {root}", flush=True)
    aug = _benchmark("augment")
    for size in (32, 64) if smoke else (32, 224):
        with report.section(f"two-view augmentation at {size} px (benchmarks/augment.py)"):
            small = ["--batch", "64", "--reps", "1", "--ref-images", "8"] if smoke else ["--batch", "512"]
            ips = aug.main(["--device", device, "--size", str(size), *small])
            report.note(
                f"augmentation {size} px: {ips['ours']:,.0f} images/s on {device} = "
                f"{ips['ours'] / max(ips['uint8'], ips['float']):.1f}x torchvision per sample on the CPU"
            )
    with report.section("training step: ours vs lightly (benchmarks/train_step.py)"):
        reference = "lightly" if "lightly" not in missing else "none"
        sizes = (
            [
                "--encoder",
                "small_cnn",
                "--batch",
                "32",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--images",
                "160",
                "--workers",
                "0",
            ]
            if smoke
            else [
                "--batch",
                "512",
                "--steps",
                "20",
                "--warmup",
                "3",
                "--rounds",
                "2",
                "--images",
                "10240",
                "--workers",
                str(min(16, os.cpu_count() or 1)),
            ]
        )
        best = _benchmark("train_step").main(
            ["--device", device, "--data-root", str(root), "--reference", reference, *sizes]
        )
        if "lightly" in best:
            report.note(
                f"training step: ours {best['ours']:,.0f} vs lightly {best['lightly']:,.0f} images/s = "
                f"{best['ours'] / best['lightly']:.2f}x (goal >= {GOAL_VS_LIGHTLY}x)"
            )
        else:
            report.note(f"training step: ours {best['ours']:,.0f} images/s; lightly not installed, no reference")
    if device == "cuda":
        torch.cuda.empty_cache()  # what the benchmarks above cached goes back to the cells below
    rates: dict[int, float] = {}
    with report.section("cifar10 cells at once on one device (ablation.pack)"):
        ks = [1, 2] if smoke else [1, 2, 4]
        k_cells(
            report,
            "cifar10 cells",
            cell_config(root, smoke, device=device),
            ks,
            warmup=1 if smoke else 5,
            steps=1 if smoke else 30,
            rates=rates,
        )
    with report.section("one cifar10 cell on the real data"):
        batch = cell_config(root, smoke).train.batch_size
        budget = min(args.cell_s, report.left() - 90)  # 90 s: probes, the small cells, the summary
        rate = rates.get(1, A100_IMAGES_S)  # one cell's images/s, measured above
        epochs = 1 if smoke else max(1, math.floor((budget - 30) * rate / (50_000 // batch * batch)))
        print(f"{epochs} epochs in about {budget:.0f} s")
        one_cell(report, cell_config(root, smoke, epochs, device), scratch / "cell")
    if not smoke and report.left() > 75:  # (--smoke: the same code as the cifar10 cells above)
        with report.section("small cells at once on one device (embedded preset)"):
            k_cells(report, "embedded cells", embedded_config(device), [1, 2, 4], warmup=10, steps=100, rates={})


if __name__ == "__main__":
    sys.exit(main())
