"""The report in other forms: report.html (self-contained, rendered by headless Chromium), tables.tex
(numbers equal to summary.csv, compiles with pdflatex) and the report's W&B run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_analysis import OPS, base_value, pairwise_cells, pairwise_exp

import analysis
from ablation import store
from ablation.cli import build_parser
from ablation.names import FINISHED
from analysis.html import markdown_to_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """A pairwise grid with two seeds per pair, one seed for blur+color and no crop+blur result."""
    cells = [
        c
        for c in pairwise_cells(base_value, skip={("crop", "blur")})
        if not (c["label"] == "blur+color" and c["seed"] == 1)
    ]
    exp_dir = pairwise_exp(tmp_path, "pairwise", cells)
    analysis.report(exp_dir)
    return exp_dir


def test_html_has_the_reports_sections_tables_and_inline_figures(grid: Path) -> None:
    text, page = (grid / store.REPORT).read_text(), (grid / store.REPORT_HTML).read_text()
    headings = re.findall(r"^## (.*)$", text, flags=re.M)
    assert headings and re.findall(r"<h2>(.*?)</h2>", page) == headings
    assert page.count("<table>") == text.count("\n|---|") and "<table>" in page
    images = dict(re.findall(r'<img alt="([^"]*)" src="([^"]{0,22})', page))
    assert images["heatmap"] == "data:image/png;base64," and set(images.values()) == {"data:image/png;base64,"}
    assert "<strong>does not hold</strong>" in page or "<strong>holds</strong>" in page


def test_markdown_subset_converts_and_escapes(tmp_path: Path) -> None:
    page = markdown_to_html(
        "# T <x>\n\n- a **b** `c|d`\n- [e](f.pdf)\n\n| h | i |\n|---|---|\n| 1 \\| 2 | 3 |\n", tmp_path
    )
    assert "<h1>T &lt;x&gt;</h1>" in page and "<li>a <strong>b</strong> <code>c|d</code></li>" in page
    assert '<li><a href="f.pdf">e</a></li>' in page
    assert "<tr><th>h</th><th>i</th></tr>" in page and "<tr><td>1 | 2</td><td>3</td></tr>" in page


def render(page: Path, out: Path) -> np.ndarray:
    """A headless Chromium screenshot of `page` as an RGB array."""
    from PIL import Image

    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={out.parent / 'chromium-profile'}",
            "--window-size=1200,3000",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def coloured(image: np.ndarray) -> int:
    """Pixels of strong colour: the figures (text, rules and table borders are grey)."""
    return int(((image.max(axis=2) - image.min(axis=2)) > 80).sum())


def grey_lines(image: np.ndarray) -> int:
    """Pixels of the tables' light grey borders and header shading."""
    return int(
        (np.abs(image - np.array([204, 204, 204])).max(axis=2) <= 8).sum()
        + (np.abs(image - np.array([243, 243, 243])).max(axis=2) <= 2).sum()
    )


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_renders_in_chromium_with_heatmap_and_tables(grid: Path, tmp_path: Path) -> None:
    page = (grid / store.REPORT_HTML).read_text()
    variants = {
        "full": page,
        "no_images": re.sub(r"<img [^>]*>", "", page),
        "no_tables": re.sub(r"<table>.*?</table>", "", page, flags=re.S),
    }
    shots = {}
    for name, html in variants.items():
        path = tmp_path / f"{name}.html"
        path.write_text(html)
        shots[name] = render(path, tmp_path / f"{name}.png")
    assert coloured(shots["full"]) > 20_000 > 10 * coloured(shots["no_images"])  # the heatmap shows
    assert grey_lines(shots["full"]) - grey_lines(shots["no_tables"]) > 2_000  # and so do the tables


def tex_rows(text: str, first: str) -> list[list[str]]:
    """The body rows of the tabular whose header starts with `first`."""
    block = text[text.index(first) :]
    block = block[block.index("\\midrule") + len("\\midrule") : block.index("\\bottomrule")]
    return [[c.strip() for c in line.rstrip(" \\").split(" & ")] for line in block.strip().splitlines()]


def expected(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "--"
    return f"{mean:.1f}" + ("" if np.isnan(std) else f" $\\pm$ {std:.1f}")


def test_report_takes_latex_flag() -> None:
    assert build_parser().parse_args(["report", "pairwise", "--latex"]).latex
    assert not build_parser().parse_args(["report", "pairwise"]).latex


def test_latex_numbers_equal_summary_csv(grid: Path) -> None:
    tex = analysis.write_latex(grid).read_text()
    summary = pd.read_csv(grid / store.SUMMARY)
    done = summary[summary["status"] == FINISHED].groupby(["first", "second"])["linear_top1"]
    mean, std = 100 * done.mean(), 100 * done.std()
    rows = tex_rows(tex, "1st $\\backslash$ 2nd")
    assert [r[0] for r in rows] == OPS
    for row, first in zip(rows, OPS):
        cells = [expected(mean.get((first, s), np.nan), std.get((first, s), np.nan)) for s in OPS]
        average = np.nanmean([mean.get((first, s), np.nan) for s in OPS])
        assert row[1:] == [*cells, f"{average:.1f}"]
    assert rows[0][3] == "--" and "$\\pm$" not in rows[2][2]  # crop+blur missing; blur+color has one seed
    by_label = summary[summary["status"] == FINISHED].groupby("label")["knn_top1"]
    knn_mean, knn_std = 100 * by_label.mean(), 100 * by_label.std()
    rows = tex_rows(tex, "label & n")
    assert [r[0] for r in rows] == list(dict.fromkeys(summary["label"]))
    for row in rows:
        assert row[-1] == expected(knn_mean.get(row[0], np.nan), knn_std.get(row[0], np.nan))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_tables_compile(grid: Path, tmp_path: Path) -> None:
    tables = analysis.write_latex(grid)
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        f"\\input{{{tables}}}\n\\end{{document}}\n"
    )
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


@pytest.mark.slow
def test_report_logged_once_to_wandb(grid: Path, monkeypatch, tmp_path: Path) -> None:
    from test_loggers import offline_runs

    pytest.importorskip("wandb")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_PROJECT": "p",
        "HOME": str(tmp_path),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    analysis.report(grid)
    (run,) = offline_runs(grid)
    assert (run["id"], run["group"], run["name"]) == ("pairwise-report", "pairwise", "report")
    (step,) = run["history"]
    logged = {key.rsplit("/", 1)[0] for key in step if key.endswith("/_type")}  # media are logged by their parts
    assert {"figures/heatmap", "report", "summary"} <= logged
