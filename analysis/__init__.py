"""Analysis of grid results: summary tables, paper-style figures, the paper's numbers, a report.

Reads results/<experiment>/ as written by the launcher and cells; never imports training code.
"""

from __future__ import annotations

from .classes import class_change
from .curves import load_curves
from .figures import heatmap_matrix, plot
from .latex import write_latex
from .paper import compare_with_paper, paper_table
from .report import pairwise_findings, report
from .table import collect, load_summary, per_class

__all__ = [
    "class_change",
    "collect",
    "compare_with_paper",
    "heatmap_matrix",
    "load_curves",
    "load_summary",
    "pairwise_findings",
    "paper_table",
    "per_class",
    "plot",
    "report",
    "write_latex",
]
