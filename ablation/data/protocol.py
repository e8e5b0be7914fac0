"""The former name of source_crop.py (its `Protocol` is `SourceCrop`, `protocol` is `split_source_crop`),
kept only for two importers that other changes own: ablation/cell.py and tests/test_folders.py. Delete
it once they import ablation.data.source_crop."""
from __future__ import annotations

from .source_crop import DRAWS, TRIES, SourceViews, boxes, draw
from .source_crop import split_source_crop as protocol

__all__ = ["DRAWS", "TRIES", "SourceViews", "boxes", "draw", "protocol"]
