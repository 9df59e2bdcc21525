"""From sections to pages: markdown and HTML tables, and the two Jinja2 templates
(``templates/report.md.j2``, ``templates/report.html.j2``) that loop over the sections.

report.html opens from disk: plots are inline (base64 PNG), the table of contents, the anchors and the
sorting script (a click on a column heading sorts the table; numbers sort as numbers) are in the page.
"""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import List

import jinja2
import numpy as np
import pandas as pd

TEMPLATES = Path(__file__).with_name("templates")
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=False,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                          undefined=jinja2.StrictUndefined)


def cell_text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def inline_md(text: str) -> str:
    """Escape, then the two markdown marks the report's prose uses: `code` and **bold**."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return t


def markdown_table(df: pd.DataFrame) -> str:
    if not len(df.columns):
        return "_(no data)_\n"
    esc = lambda s: cell_text(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame, table_id: str = "") -> str:
    if not len(df.columns):
        return "<p><em>(no data)</em></p>"
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    head = "".join(f"<th>{html.escape(cell_text(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        tds = []
        for v in row:
            t = cell_text(v)
            cls = ' class="bad"' if t.startswith(("failed", "missing", "corrupt", "diverged")) else ""
            tds.append(f"<td{cls}>{inline_md(t)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<table class="sortable"{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _png_data(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_markdown(title: str, prov: str, sections: List, root: Path) -> str:
    return _ENV.get_template("report.md.j2").render(
        title=title, prov=prov, sections=sections, table=markdown_table,
        rel=lambda p: Path(p).relative_to(root).as_posix())


def render_html(title: str, prov: str, sections: List) -> str:
    return _ENV.get_template("report.html.j2").render(
        title=title, prov=prov, sections=sections, table=html_table, md=inline_md, esc=html.escape,
        png=_png_data)
