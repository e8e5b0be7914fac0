"""Where derived data is kept between runs: decoded sets (sources.py) and folder fingerprints
(fingerprint.py). Torch-free, so `ablate status` can find it."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("ABLATION_CACHE", Path.home() / ".cache" / "ablation"))
