"""Great Expectations Data Docs that open offline: no request to any remote server.

GX 1.x writes Data Docs whose pages load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega
from CDNs, a logo from GX's web-assets server, and link to GX's website. Opened inside a secure
environment those requests fail (or, worse, leave it); the index page's tables are filled in by
bootstrap-table from a script, so without the CDN they are empty. GX's own template loader looks
in its package first, so its templates cannot be overridden by a project's custom views.

:func:`make_offline` rewrites the written site instead, after every build:

* ``<link>``, ``<script src>`` and ``<img>`` pointing at ``http(s)://`` are removed (an image is
  replaced by its ``alt`` text), remote ``<a href>`` links become their plain text, and
  ``url(http...)`` in CSS becomes ``none``; SVG comments (generator credits with addresses) go;
* each bootstrap-table (``$('#id').bootstrapTable({columns: [...], data: [...]})``) becomes a
  static HTML table of the same columns and rows; the status column shows its text (Succeeded /
  Failed) with a mark, and each row links to its page as the clickable rows did;
* Font Awesome icons become text marks (✓ ✗ ?); inline scripts, which all need jQuery, are
  removed; a small inline style sheet lays out the page.

The rewrite is idempotent (a page already rewritten is left as it is). A page whose table script
cannot be read is logged and left without its script rather than failing validation.
"""

from __future__ import annotations

import ast
import html
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OFFLINE_MARKER = "<!-- data docs: offline -->"
WEB_SUFFIXES = (".html", ".css", ".svg")

_REMOTE = r"""["']?https?://[^"'\s>)]*["']?"""
_REMOTE_LINK_TAG = re.compile(rf"<link\b[^>]*\bhref={_REMOTE}[^>]*>\s*", re.I)
_REMOTE_SCRIPT = re.compile(rf"<script\b[^>]*\bsrc={_REMOTE}[^>]*>\s*</script>\s*", re.I)
_REMOTE_IMG = re.compile(rf"<img\b[^>]*\bsrc={_REMOTE}[^>]*>", re.I | re.S)
_REMOTE_ANCHOR = re.compile(rf"<a\b[^>]*\bhref={_REMOTE}[^>]*>(.*?)</a>", re.I | re.S)
_CSS_REMOTE_URL = re.compile(r"url\(\s*['\"]?https?://[^)]*\)", re.I)
_ALT = re.compile(r"""\balt=["']([^"']*)["']""", re.I)
_XML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_FA_ICON = re.compile(r"<i\b[^>]*\bclass=\"([^\"]*\bfa-[^\"]*)\"[^>]*>\s*</i>", re.I)
_INLINE_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>\s*", re.I | re.S)
_CLEAR_FILTERS = re.compile(r"<button\b[^>]*clearTableFilters[^>]*>.*?</button>", re.I | re.S)
_EMPTY_TABLE = re.compile(
    r"<table\s+id=\"(?P<id>[^\"]+)\"(?P<attrs>[^>]*)data-toggle=\"table\"\s*>\s*</table>", re.S
)
_TABLE_SCRIPT = re.compile(
    r"\$\('#(?P<id>[^']+)'\)\.bootstrapTable\(\s*Object\.assign\(\s*\{\s*"
    r"columns:\s*(?P<columns>\[.*?\]),\s*data:\s*(?P<data>\[.*?\]),\s*toolbar:",
    re.S,
)

OFFLINE_STYLE = """<style>
/* data docs: offline layout (no CDN style sheets) */
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0; color: #212529; }
nav.navbar { padding: 0.5rem 1.5rem; border-bottom: 1px solid #dee2e6; }
.offline-brand { font-size: 1.25rem; font-weight: 600; }
.container-fluid { padding: 1.5rem 2rem; }
.row { display: flex; flex-wrap: wrap; }
.col-md-2, .col-lg-2 { flex: 0 0 16%; max-width: 16%; }
.col-md-10, .col-lg-10 { flex: 0 0 82%; max-width: 82%; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #dee2e6; padding: 0.3rem 0.6rem; text-align: left;
         vertical-align: top; }
thead th { background: #f1f3f5; }
.text-success { color: #198754; } .text-danger { color: #dc3545; }
.ge-status { font-weight: 600; white-space: nowrap; }
.modal, .d-none, .collapse:not(.show), .cooltip .top { display: none; }
.cooltip:hover .top { display: block; }
.btn { display: none; }
</style>
"""

_ICON_TEXT = (
    ("fa-check", "✓"),
    ("fa-times", "✗"),
    ("fa-question", "?"),
    ("fa-exclamation", "!"),
)


def make_offline(site_root: Path) -> int:
    """Rewrite every HTML, CSS and SVG file under ``site_root`` so that none makes a remote
    request. Returns the number of files changed."""
    changed = 0
    for path in sorted(site_root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in WEB_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        suffix = path.suffix.lower()
        if suffix == ".html":
            new = offline_page(text, name=str(path.relative_to(site_root)))
        elif suffix == ".css":
            new = _CSS_REMOTE_URL.sub("none", text)
        else:
            new = _XML_COMMENT.sub("", text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed += 1
    return changed


def offline_page(page: str, name: str = "page") -> str:
    """One Data Docs HTML page without remote requests, its tables static."""
    if OFFLINE_MARKER in page:
        return page
    tables = {m.group("id"): m for m in _TABLE_SCRIPT.finditer(page)}

    def static(m: re.Match[str]) -> str:
        script = tables.get(m.group("id"))
        if script is None:
            log.warning("Data Docs %s: table %s has no readable data; left empty", name, m["id"])
            return m.group(0)
        try:
            columns = ast.literal_eval(script.group("columns"))
            rows = ast.literal_eval(script.group("data"))
        except (ValueError, SyntaxError):
            log.warning("Data Docs %s: table %s data not readable; left empty", name, m["id"])
            return m.group(0)
        return static_table(m.group("id"), m.group("attrs"), columns, rows)

    page = _EMPTY_TABLE.sub(static, page)
    page = _REMOTE_LINK_TAG.sub("", page)
    page = _REMOTE_SCRIPT.sub("", page)
    page = _REMOTE_IMG.sub(_img_alt, page)
    page = _REMOTE_ANCHOR.sub(lambda m: m.group(1), page)
    page = _CSS_REMOTE_URL.sub("none", page)
    page = _INLINE_SCRIPT.sub("", page)
    page = _CLEAR_FILTERS.sub("", page)
    page = _FA_ICON.sub(_icon_text, page)
    head_end = page.lower().find("</head>")
    if head_end >= 0:
        page = page[:head_end] + OFFLINE_STYLE + page[head_end:]
    return OFFLINE_MARKER + "\n" + page


def static_table(
    table_id: str, attrs: str, columns: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> str:
    """A bootstrap-table's columns and rows as a plain HTML table (cells are GX's own HTML)."""
    sort = next(
        (c.get("sortName") or c["field"] for c in columns if c.get("field") == "run_time"), None
    )
    if sort:
        rows = sorted(rows, key=lambda r: r.get(sort, 0), reverse=True)
    head = "".join(f"<th>{html.escape(str(c.get('title', c['field'])))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for i, col in enumerate(columns):
            field = col["field"]
            if field == "validation_success" and "_validation_success_text" in row:
                cell = _status(str(row["_validation_success_text"]))
            else:
                cell = str(row.get(field, ""))
            link = row.get("_table_row_link_path")
            if i == 0 and link and "<a " not in cell:
                cell = f'<a href="{html.escape(str(link), quote=True)}">{cell}</a>'
            cells.append(f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="{table_id}"{attrs}>\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"
    )


def _status(text: str) -> str:
    ok = text.strip().lower() in ("success", "succeeded", "passed", "true")
    mark, css = ("✓", "text-success") if ok else ("✗", "text-danger")
    return f'<span class="ge-status {css}">{mark} {html.escape(text)}</span>'


def _img_alt(m: re.Match[str]) -> str:
    alt = _ALT.search(m.group(0))
    return f'<span class="offline-brand">{alt.group(1) if alt else ""}</span>'


def _icon_text(m: re.Match[str]) -> str:
    classes = m.group(1)
    mark = next((t for fa, t in _ICON_TEXT if fa in classes), "•")
    colour = " ".join(c for c in classes.split() if c.startswith("text-"))
    return f'<span class="{colour}">{mark}</span>'
