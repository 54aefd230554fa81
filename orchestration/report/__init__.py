"""``RUN/report.html``: one self-contained page (no network, images inlined) from a run's
outputs, to the standard of a published cohort study (STROBE / RECORD items).

The page leaves the secure environment, so every number in it is disclosure-controlled
(:mod:`models.disclosure`): counts come from ``release/`` or go through the same control;
percentages are computed from released counts; estimates are the released ones; figures are
drawn from released numbers only. The header and the disclosure section carry the label of the
thresholds used (NOT disclosure-controlled below the floors).

Where things are:

* :data:`SECTIONS`: the sections in page order, their anchors and titles, and the function
  that writes each (:mod:`orchestration.report.sections`);
* :mod:`orchestration.report.figures`: the drawings (flow diagram, forest plot, Kaplan-Meier
  with numbers at risk, overlap, balance);
* :mod:`orchestration.report.data`: what the report computes from the cohort tables itself
  (means, standardised differences, Kaplan-Meier of every time-to-event outcome, overlap);
* :mod:`orchestration.report.labels`: readable names; :mod:`orchestration.report.markup`:
  stylesheet, tables, the release CSV reader.

docs/report.md lists the sections and what each shows.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path

from ground.run_layout import RunLayout
from orchestration.report import answers, sections
from orchestration.report.markup import CSS
from orchestration.report.sections import ReportContext, scrub_counts

__all__ = ["SECTIONS", "build_report", "scrub_counts"]


def _data_quality(ctx: ReportContext) -> str | None:
    return _delivery(ctx)[0]


def _linkage(ctx: ReportContext) -> str | None:
    linkage = _delivery(ctx)[1]
    if linkage is None:
        return None
    return linkage + sections.linkage_charts(ctx) + ctx.released


def _delivery(ctx: ReportContext) -> tuple[str | None, str | None]:
    dq_path = ctx.layout.validation_dir / "dq_report.json"
    lr_path = ctx.layout.linkage_dir / "linkage_report.json"
    if not dq_path.exists():
        return None, None
    dq = json.loads(dq_path.read_text(encoding="utf-8"))
    lr = json.loads(lr_path.read_text(encoding="utf-8")) if lr_path.exists() else None
    quality, linkage = sections.delivery_sections(dq, lr, ctx.disclosure)
    return quality + ctx.released, (linkage if lr is not None else None)


Section = Callable[[ReportContext], "str | None"]

# (anchor, title, writer) in page order; the summary's contents list is made from this
SECTIONS: list[tuple[str, str, Section]] = [
    ("answers", "The study's three questions", answers.answers),
    ("provenance", "Run provenance", sections.provenance),
    ("data-quality", "Data quality", _data_quality),
    ("linkage", "Linkage quality", _linkage),
    ("attrition", "Cohort attrition", sections.attrition),
    ("table1", "Table 1: baseline characteristics", sections.table1),
    ("estimates", "Main estimates", sections.estimates),
    ("km", "Kaplan-Meier curves", sections.kaplan_meier),
    ("diagnostics", "Propensity overlap, balance and diagnostics", sections.diagnostics),
    ("sensitivity", "Sensitivity analyses", sections.sensitivity),
    ("disclosure", "Disclosure control", sections.disclosure),
]


# the name tests/test_disclosure.py imports
_delivery_sections = sections.delivery_sections


def build_report(layout: RunLayout) -> Path:
    """Write ``report.html`` from the files of a finished run."""
    ctx = ReportContext.of(layout)
    body = ""
    for sid, title, write in SECTIONS:
        part = write(ctx)
        body += (
            f'<section id="{sid}"><h2>{html.escape(title)}</h2>'
            f"{part if part is not None else '<p><em>not available</em></p>'}</section>"
        )
    contents = [(sid, title) for sid, title, _ in SECTIONS]
    summary = sections.summary(ctx, contents)
    s = ctx.disclosure
    header_class = "restricted" if s.below_floor else "released"
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>CLA vs NLA cohort study: report</title>"
        f"<style>{CSS}</style></head><body>"
        "<h1>Children looked after vs children in need: study report</h1>"
        f'<p class="status {header_class}">This report: {html.escape(s.label)}</p>'
        "<p>Every number here comes from release/ or went through the same disclosure "
        "control; full-precision results stay in the secure environment.</p>"
        f'<section id="summary"><h2>Summary</h2>{summary}</section>{body}</body></html>'
    )
    tmp = layout.report.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(layout.report)
    return layout.report
