"""benchmarks/device_check.py: --smoke runs every part of the GPU check on the CPU, end to end, and the
wheels it installs on a machine without network are the missing packages and what they need."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


SUMMARY = (
    "augmentation 32 px:",
    "augmentation 64 px:",
    "training step: ours",
    "cifar10 cells, augmentation:",
    "cifar10 cells together: K=1 ",
    "cifar10 cell (small_cnn, batch 32, cpu):",
    "linear top-1",
    "kNN top-1",
)


def _smoke(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, float, str]:
    """`device_check.py --smoke` as the GPU machine's image runs it: simplejpeg not importable (a module
    of that name that fails to import comes first on the path, children included), no wheels."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "simplejpeg.py").write_text("raise ImportError('simplejpeg is not installed here')\n")
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        **env,  # its scratch folders go to tmp_path
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hide), os.environ.get("PYTHONPATH")])),
    }
    argv = [sys.executable, "benchmarks/device_check.py", "--smoke", "--wheels", str(tmp_path), *args]
    t0 = time.monotonic()
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    assert "== summary" in run.stdout, run.stdout[-4000:] + run.stderr[-4000:]
    return run, took, run.stdout.split("== summary", 1)[1]


@pytest.mark.slow
def test_device_check_smoke_runs_every_part_on_the_cpu_without_simplejpeg(tmp_path):
    """13 s on two idle cores; held to the goal of a minute by its watchdog whatever the load (every
    section must still report within it)."""
    minutes = 1
    run, took, summary = _smoke(tmp_path, "--minutes", str(minutes))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for figure in SUMMARY:
        assert figure in summary, f"{figure!r} missing from the summary:\n{summary}"
    assert "images/s" in summary and "FAILED" not in run.stdout
    assert took < 60 * minutes + 5, f"{took:.0f} s"  # 5 s: the interpreter's start and end


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_k_cells_child_that_crashes_or_hangs_fails_its_section_alone(tmp_path, fault):
    """The second of two cells dies without a word (exit code 3) or never reaches the barrier: the
    parent stops both (at once, or at its time limit), the next section runs, the summary prints
    within --minutes (11 s on two idle cores for a crash, 30 s for a hang: the K-cells section gets half
    the minute)."""
    minutes = 1
    run, took, summary = _smoke(tmp_path, "--minutes", str(minutes), DEVICE_CHECK_FAULT=fault)
    assert run.returncode == 1
    why = "died (exit code 3)" if fault == "crash" else "still running at the time limit"
    assert "FAILED: cifar10 cells at once on one device (ablation.pack): " in run.stdout and why in run.stdout
    assert "failed sections: cifar10 cells at once on one device (ablation.pack)" in summary
    assert "cifar10 cells together: K=1 " in summary and "K=2" not in summary  # what K=1 measured is kept
    assert "cifar10 cell (small_cnn, batch 32, cpu):" in summary  # the next section ran
    assert took < 60 * minutes + 5, f"{took:.0f} s"


@pytest.mark.slow
def test_the_summary_prints_before_the_time_runs_out_whatever_is_still_running():
    """A section that never returns: the watchdog prints the summary (with what was noted) and ends
    the process SUMMARY_S before --minutes."""
    code = (
        "import sys, time; sys.path.insert(0, 'benchmarks'); import device_check as c\n"
        "r = c.Report(0.1)\n"
        "r.note('measured: 1 thing')\n"
        "with r.section('stuck'):\n    time.sleep(60)\n"
    )
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert run.returncode == 1, run.stderr
    summary = run.stdout.split("== summary", 1)[1]
    assert "measured: 1 thing" in summary and "failed sections: stuck (stopped: --minutes ran out)" in summary
    assert took < 6, f"{took:.1f} s"


def _wheel(folder: Path, name: str, *requires: str) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
    return path


def test_wheels_for_the_missing_packages_and_what_they_need_from_the_folder(tmp_path):
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    top = _wheel(tmp_path, "top_pkg", "Dep.Two>=1.0", "torch", 'docs-only; extra == "docs"')
    dep = _wheel(tmp_path, "dep_two", "dep-three (>=2)")
    deeper = _wheel(tmp_path, "dep_three")
    _wheel(tmp_path, "docs_only")
    _wheel(tmp_path, "unrelated")
    assert check.wheels_for(["top-pkg"], tmp_path) == sorted([top, dep, deeper])  # torch: not in the folder
    assert check.wheels_for(["absent"], tmp_path) == []
