"""benchmarks/device_check.py --smoke: every part of the GPU check runs on the CPU, end to end."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_smoke_runs_every_part_on_the_cpu(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its scratch folder (image folder, decoded cache) goes here
    run = subprocess.run([sys.executable, "benchmarks/device_check.py", "--smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = run.stdout.split("== summary", 1)[1]
    for figure in ("augmentation 32 px:", "augmentation 64 px:", "training step: ours", "cifar10 cells, augmentation:",
                   "cifar10 cells together: K=1 ", "cifar10 cell (small_cnn, batch 32, cpu):", "linear top-1", "kNN top-1"):
        assert figure in summary, f"{figure!r} missing from the summary:\n{summary}"
    assert "images/s" in summary and "FAILED" not in run.stdout
