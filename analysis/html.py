"""report.html from report.md: one self-contained page (figures inline as base64 PNG) that opens in any
browser without a server.

It converts the report's Markdown rather than building a second report, so the page always says what
report.md says. Only the subset report.md is written in is understood: `#` headings, paragraphs, `- `
lists, pipe tables, images, links, `code` and **bold**; anything else shows as its text.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ablation import store

STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}img{max-width:100%;display:block}
code{background:#f3f3f3;padding:0 3px}"""
INLINE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)|`([^`]+)`|\*\*(.+?)\*\*")
CELL_SPLIT = re.compile(r"(?<!\\)\|")


def _image(alt: str, src: str, folder: Path) -> str:
    """An <img> with the PNG inline; a missing file keeps its relative link."""
    path = folder / src
    if path.suffix.lower() == ".png" and path.is_file():
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="{html.escape(src)}">'


def inline(text: str, folder: Path) -> str:
    """One line of Markdown as HTML, everything outside the markup escaped."""
    out, pos = [], 0
    for m in INLINE.finditer(text):
        out.append(html.escape(text[pos : m.start()]))
        alt, src, label, href, code, bold = m.groups()
        if src is not None:
            out.append(_image(alt, src, folder))
        elif href is not None:
            out.append(f'<a href="{html.escape(href)}">{inline(label, folder)}</a>')
        elif code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        else:
            out.append(f"<strong>{inline(bold, folder)}</strong>")
        pos = m.end()
    return "".join(out) + html.escape(text[pos:])


def _row(line: str, tag: str, folder: Path) -> str:
    cells = [c.strip().replace("\\|", "|") for c in CELL_SPLIT.split(line.strip().strip("|"))]
    return "<tr>" + "".join(f"<{tag}>{inline(c, folder)}</{tag}>" for c in cells) + "</tr>"


def _table(lines: list[str], folder: Path) -> str:
    """A pipe table: header, the |---| line, rows."""
    body = [_row(line, "td", folder) for line in lines[2:]]
    return f"<table><thead>{_row(lines[0], 'th', folder)}</thead><tbody>{''.join(body)}</tbody></table>"


def _block(lines: list[str], folder: Path) -> str:
    """One block of consecutive non-blank lines."""
    first = lines[0]
    if heading := re.match(r"(#{1,6}) (.*)", first):
        level = len(heading.group(1))
        rest = _block(lines[1:], folder) if len(lines) > 1 else ""
        return f"<h{level}>{inline(heading.group(2), folder)}</h{level}>{rest}"
    if first.startswith("|") and len(lines) > 1 and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[1].strip()):
        return _table(lines, folder)
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{inline(line[2:], folder)}</li>" for line in lines) + "</ul>"
    return "<p>" + "<br>".join(inline(line, folder) for line in lines) + "</p>"


def markdown_to_html(text: str, folder: Path, title: str = "") -> str:
    """A whole page from report Markdown; images are read relative to `folder`."""
    blocks, current = [], []
    for line in text.splitlines() + [""]:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append(_block(current, folder))
            current = []
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(blocks) + "\n</body></html>\n"
    )


def write_html(report: Path) -> Path:
    """report.html beside a report.md, from its text."""
    report = Path(report)
    text = report.read_text()
    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), report.parent.name)
    page = markdown_to_html(text, report.parent, title)
    return store.atomic_write(report.with_name(store.REPORT_HTML), lambda f: f.write(page))
