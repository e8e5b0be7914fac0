"""benchmarks/device_check.py: --smoke runs every part of the GPU check on the CPU, end to end, and the
wheels it installs on a machine without network are the missing packages and what they need."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_smoke_runs_every_part_on_the_cpu(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its scratch folders go here
    argv = [sys.executable, "benchmarks/device_check.py", "--smoke", "--wheels", str(tmp_path)]  # no wheels
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = run.stdout.split("== summary", 1)[1]
    for figure in ("augmentation 32 px:", "augmentation 64 px:", "training step: ours", "cifar10 cells, augmentation:",
                   "cifar10 cells together: K=1 ", "cifar10 cell (small_cnn, batch 32, cpu):", "linear top-1",
                   "kNN top-1"):
        assert figure in summary, f"{figure!r} missing from the summary:\n{summary}"
    assert "images/s" in summary and "FAILED" not in run.stdout


def _wheel(folder: Path, name: str, *requires: str) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\n".format(name) + "".join(f"Requires-Dist: {r}\n" for r in requires)
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
