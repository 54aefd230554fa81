"""HTML pieces of the report: the stylesheet, tables, inlined figures, status badges, and the
one reader of release CSVs (so a change of the release format is one edit here)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from models.outputs import read_release_csv

CSS = """
body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.45}
h1{font-size:1.7em;margin-bottom:0.2em}h2{border-bottom:2px solid #4c72b0;padding-bottom:2px;
margin-top:2em}h3{margin-bottom:0.3em}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;display:block;margin:0.4em 0 1em}
.status{display:inline-block;padding:1px 6px;border-radius:3px;font-size:0.8em}
.released{background:#d8f3dc}.restricted{background:#ffe5d9}.warn{color:#a4161a}
.summary{background:#f7f9fc;border:1px solid #dde4ee;padding:0.6em 1.2em;border-radius:4px}
nav ol{columns:2;font-size:0.95em}.note{color:#555;font-size:0.9em}
details{margin:0.3em 0 1em}summary{cursor:pointer;color:#4c72b0}
.tc2 td:nth-child(-n+2),.tc3 td:nth-child(-n+3),.tc4 td:nth-child(-n+4){text-align:left}
.tc2 th:nth-child(-n+2),.tc3 th:nth-child(-n+3),.tc4 th:nth-child(-n+4){text-align:left}
.tc4{overflow-x:auto}.tc4 table{font-size:0.78em}
.reading{border-left:3px solid #4c72b0;padding:0.2em 0 0.2em 0.7em;margin:0.3em 0 0.8em}
.tc4 td:last-child,.tc4 th:last-child{text-align:left}.tc4 td:nth-child(5){white-space:nowrap}
"""


def table(df: pd.DataFrame, floatfmt: str = "{:.3f}", text_cols: int = 1) -> str:
    """A plain ``<table>`` (first row the header; the disclosure tests read it as such), its
    first ``text_cols`` columns left-aligned (text), the rest right-aligned (numbers)."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else floatfmt.format(v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>"
        for r in df.itertuples(index=False)
    )
    table_html = f"<table><tr>{head}</tr>{rows}</table>"
    return table_html if text_cols == 1 else f'<div class="tc{text_cols}">{table_html}</div>'


def png_img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def img_file(path: Path, alt: str) -> str:
    if not path.exists():
        return f"<p><em>{html.escape(alt)}: not produced</em></p>"
    return png_img(path.read_bytes(), alt)


def status(label: str) -> str:
    cls = "restricted" if label.startswith("NOT") else "released"
    return f'<span class="status {cls}">released: {html.escape(label)}</span>'


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def read_release(release_dir: Path, name: str) -> pd.DataFrame | None:
    """``release/<name>.csv`` as text cells (None when absent): the one place the report reads
    the release format."""
    path = release_dir / f"{name}.csv"
    if not path.exists():
        return None
    try:
        return read_release_csv(path)
    except ValueError:  # a run released before the 'suppressed' column: text cells already
        return read_csv_text(path)


def read_csv_text(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)
