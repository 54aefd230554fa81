"""``RUN/report.html``: one self-contained page (no network, images inlined) from stage outputs.

The report leaves the secure environment, so every number in it is disclosure-controlled
(:mod:`models.disclosure`): counts come from ``release/`` or go through the same control here
(rounding, suppression of small counts, secondary suppression along each row's sums);
percentages are computed from the released counts; estimates are the released ones; the
Kaplan-Meier figures are the coarsened ones; figures that could show individuals (propensity
overlap histogram, exact KM steps) stay in ``results/figures`` (secure). The header and the
disclosure section carry the label of the thresholds used (NOT disclosure-controlled below the
floors).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ground.run_layout import RunLayout
from models.disclosure import (
    SUPPRESSED,
    WITHHELD,
    Cell,
    DisclosureSettings,
    Relation,
    control_cells,
    sum_of,
)
from models.outputs import ESTIMATE_ANALYSES, km_outcomes
from schemas.analyses import Analysis, load_run_analyses

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.status{display:inline-block;padding:1px 6px;border-radius:3px;font-size:0.8em}
.released{background:#d8f3dc}.restricted{background:#ffe5d9}.warn{color:#a4161a}
"""

SECTIONS = [
    ("data-quality", "Data quality"),
    ("linkage", "Linkage quality"),
    ("attrition", "Cohort attrition"),
    ("table1", "Table 1: baseline characteristics"),
    ("estimates", "Main estimates"),
    ("km", "Kaplan-Meier curves"),
    ("diagnostics", "Diagnostics"),
    ("sensitivity", "Sensitivity analyses"),
    ("disclosure", "Disclosure control"),
]


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return f"<p><em>{html.escape(alt)}: not produced</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else floatfmt.format(v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>"
        for r in df.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _status(label: str) -> str:
    cls = "restricted" if label.startswith("NOT") else "released"
    return f'<span class="status {cls}">released: {html.escape(label)}</span>'


def _disclosure_settings(layout: RunLayout) -> DisclosureSettings:
    """The thresholds the model stage released with (defaults before it has run)."""
    path = layout.results_dir / "model_settings.yaml"
    if path.exists():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return DisclosureSettings.model_validate(data.get("disclosure") or {})
    return DisclosureSettings()


def _pct(part: str, whole: str) -> str:
    """A percentage from two released counts (never from the unrounded ones)."""
    if SUPPRESSED in (part, whole) or not whole or int(whole) == 0:
        return SUPPRESSED if SUPPRESSED in (part, whole) else ""
    return f"{100 * int(part) / int(whole):.1f}%"


def _delivery_sections(
    dq: dict[str, Any], lr: dict[str, Any] | None, s: DisclosureSettings
) -> tuple[str, str]:
    """The data-quality and linkage sections, their counts controlled together: rows read =
    staged + quarantined; staged = complete + missing per identifier = linked + not linked;
    school-census subgroups: records = linked + not linked, and the subgroups add up to the
    source. Rates and percentages are computed from the released counts."""
    values: dict[Cell, int] = {}
    rel: list[Relation] = []
    # records counted from the file itself (when the validation stage reports them) = rows read
    in_file = ("file_records",) if all("file_records" in v for v in dq.values()) else ()
    cols = (*in_file, "rows_read", "rows_staged", "rows_quarantined")
    for src, v in dq.items():
        for c in cols:
            values[("dq", src, c)] = int(v.get(c, 0))
        parts = [("dq", src, c) for c in ("rows_staged", "rows_quarantined")]
        rel.append(sum_of(("dq", src, "rows_read"), parts))
        if in_file:
            rel.append(sum_of(("dq", src, "file_records"), [("dq", src, "rows_read")]))
        staged = ("dq", src, "rows_staged")
        for ident, share in v["identifier_completeness"].items():
            values[("id", f"{src}|{ident}", "complete")] = k = round(share * values[staged])
            values[("id", f"{src}|{ident}", "missing")] = values[staged] - k
            rel.append(
                sum_of(staged, [("id", f"{src}|{ident}", c) for c in ("complete", "missing")])
            )
    by_src = (lr or {}).get("link_rate_to_spine_by_source", {})
    for src, rate in by_src.items():
        if ("dq", src, "rows_staged") not in values:
            continue
        n = values[("dq", src, "rows_staged")]
        values[("link", src, "linked")] = k = round(rate * n)
        values[("link", src, "not linked")] = n - k
        rel.append(
            sum_of(("dq", src, "rows_staged"), [("link", src, c) for c in ("linked", "not linked")])
        )
    subgroups = {
        g: rows
        for g, rows in (lr or {}).get("link_rate_to_spine_by_subgroup_school_census", {}).items()
        if g != "birth_year"
    }
    for g, rows in subgroups.items():
        for r in rows:
            key = f"{g}|{r['group']}"
            values[("sub", key, "records")] = n = int(r["records"])
            values[("sub", key, "linked")] = k = round(float(r["link_rate"]) * n)
            values[("sub", key, "not linked")] = n - k
            rel.append(
                sum_of(("sub", key, "records"), [("sub", key, c) for c in ("linked", "not linked")])
            )
        for c, total in (
            ("records", ("dq", "school_census", "rows_staged")),
            ("linked", ("link", "school_census", "linked")),
        ):
            if total in values:
                rel.append(sum_of(total, [("sub", f"{g}|{r['group']}", c) for r in rows]))
    shown = control_cells(values, rel, s)
    dq_table = pd.DataFrame(
        [
            {
                "source": src,
                **{c: shown[("dq", src, c)] for c in cols},
                "conserved": "yes" if v["conserved"] else "NO",
                "GX expectations met": f"{sum(e['success'] for e in v['expectations'])}/{len(v['expectations'])}",
                "warnings": scrub_counts("; ".join(v["warnings"])),
            }
            for src, v in dq.items()
        ]
    )
    comp = pd.DataFrame(
        [
            {
                "source": src,
                **{
                    ident: _pct(
                        shown[("id", f"{src}|{ident}", "complete")],
                        shown[("dq", src, "rows_staged")],
                    )
                    for ident in v["identifier_completeness"]
                },
            }
            for src, v in dq.items()
        ]
    ).fillna("")
    data_quality = _table(dq_table) + "<h3>Identifier completeness</h3>" + _table(comp)
    if lr is None:
        return data_quality, ""

    def rate_table(rows: list[tuple[str, Cell, str, str]]) -> str:
        return _table(
            pd.DataFrame(
                [
                    {
                        "group": name,
                        "records": shown[records],
                        "linked": shown[(t, k, "linked")],
                        "not linked": shown[(t, k, "not linked")],
                        "linked %": _pct(shown[(t, k, "linked")], shown[records]),
                    }
                    for name, records, t, k in rows
                ]
            )
        )

    linkage = (
        f"<p>Match threshold {lr['thresholds']['match_threshold']}, high-quality threshold "
        f"{lr['thresholds']['high_quality_threshold']}.</p>"
        + rate_table(
            [
                (src, ("dq", src, "rows_staged"), "link", src)
                for src in by_src
                if ("link", src, "linked") in shown
            ]
        )
    )
    for g, rows in subgroups.items():
        linkage += f"<h3>School-census link rate by {html.escape(g)}</h3>" + rate_table(
            [
                (
                    str(r["group"]),
                    ("sub", f"{g}|{r['group']}", "records"),
                    "sub",
                    f"{g}|{r['group']}",
                )
                for r in rows
            ]
        )
    return data_quality, linkage


def scrub_counts(text: str) -> str:
    """Free text with every whole number (a count) replaced by '#'; percentages and decimals
    stay (they are shares of large totals in these messages)."""
    return re.sub(r"(?<![\w.])\d+(?![\w.%])", "#", text)


# diagnostics that are not counts (sizes and effective sample sizes are counts, or equal to
# them when weights are 1, and stay in results/diagnostics.csv)
DIAGNOSTIC_ITEMS = (
    "auc",
    "equipoise",
    "max_abs_smd_before",
    "max_abs_smd_after",
    "balance_pass",
    "bootstrap_replicates",
    "p_looked_after_x_log_age",
    "cv_deviance:",
    "cv_error:",
    "fitted:",
    "warning",
)


def _diagnostics(diag: pd.DataFrame) -> pd.DataFrame:
    keep = diag[diag["item"].astype(str).str.startswith(DIAGNOSTIC_ITEMS)].copy()
    keep = keep[~keep["analysis"].astype(str).str.startswith("sensitivity")]
    keep["value"] = [
        "" if pd.isna(v) else f"{float(f'{v:.3g}'):g}" for v in keep["value"].astype(float)
    ]
    return keep.fillna("")


def _analyses(layout: RunLayout) -> tuple[Analysis, ...]:
    """The analyses the run's cohort was built with (``RUN/cohort/study_config.yaml``)."""
    return load_run_analyses(layout.cohort_dir / "study_config.yaml")


def _rows_by_analysis(
    layout: RunLayout, est: pd.DataFrame, analyses: tuple[Analysis, ...]
) -> pd.DataFrame:
    """For each row of ``est`` (release/estimates.csv): the report section its analysis
    declares (``section``) and whether its outcome is one of that analysis's negative controls
    (``negative_control``), from ``results/estimate_analyses.csv``, which the model stage writes
    beside the estimates. Rows without a known analysis (a run modelled before that file
    existed) get the section "results_only"."""
    keys = ["outcome", "contrast", "method", "scale"]
    path = layout.results_dir / ESTIMATE_ANALYSES
    named = _read(path) if path.exists() else pd.DataFrame(columns=[*keys, "analysis"])
    by_name = {a.name: a for a in analyses}
    rows = est[keys].merge(named, on=keys, how="left", validate="one_to_one")
    declared = [by_name.get(n) if isinstance(n, str) else None for n in rows["analysis"]]
    return pd.DataFrame(
        {
            "section": [a.report_section if a else "results_only" for a in declared],
            "negative_control": [
                a is not None and o in a.negative_controls
                for a, o in zip(declared, rows["outcome"], strict=True)
            ],
        }
    )


def build_report(layout: RunLayout) -> Path:
    """Write ``report.html`` from the files of a finished run."""
    s = _disclosure_settings(layout)
    analyses = _analyses(layout)
    released = _status(s.label)
    parts: dict[str, str] = {}
    dq_path = layout.validation_dir / "dq_report.json"
    lr_path = layout.linkage_dir / "linkage_report.json"
    if dq_path.exists():
        dq = json.loads(dq_path.read_text(encoding="utf-8"))
        lr = json.loads(lr_path.read_text(encoding="utf-8")) if lr_path.exists() else None
        data_quality, linkage = _delivery_sections(dq, lr, s)
        parts["data-quality"] = data_quality + released
        if lr is not None:
            parts["linkage"] = linkage + released
    rel = layout.release_dir
    att = rel / "attrition.csv"
    if att.exists():
        parts["attrition"] = _table(_read(att)) + released
    t1_path = rel / "table1_counts.csv"
    if t1_path.exists():
        t1 = _read(t1_path)
        kids = t1[t1["characteristic"] == "children"]
        for g in ("CLA", "NLA"):
            whole = kids[f"n_{g}"].iloc[0] if len(kids) else ""
            t1[f"% {g}"] = [_pct(v, whole) for v in t1[f"n_{g}"]]
        parts["table1"] = (
            "<p>Counts and percentages by group, percentages computed from the released "
            "counts. The percentages weighted by the ATT propensity weights stay in "
            "results/table1.csv (secure): in the looked-after group they equal the unweighted "
            "ones, so they would give the exact counts back.</p>" + _table(t1) + released
        )
    est_path = rel / "estimates.csv"
    if est_path.exists():
        est = _read(est_path)
        rows = _rows_by_analysis(layout, est, analyses)
        main = est[(rows["section"] == "estimates").to_numpy()]
        parts["estimates"] = (
            _table(main)
            + released
            + "".join(
                _img(layout.figures_dir / f, f)
                for f in ("forest_ks4.png", "forest_level2.png", "forest_hazard_ratios.png")
            )
        )
        em = est[(rows["section"] == "effect_modification").to_numpy()]
        hq = est[(rows["section"] == "high_quality_links").to_numpy()]
        neg = est[rows["negative_control"].to_numpy()]
        negative_controls = sorted({o for a in analyses for o in a.negative_controls})
        sens_path = layout.results_dir / "sensitivity.csv"
        evalues = ""
        if sens_path.exists():
            ev = pd.read_csv(sens_path).merge(
                est[est["estimate"] != WITHHELD][["outcome", "contrast", "method", "scale"]],
                on=["outcome", "contrast", "method", "scale"],
            )
            ev = ev.drop(columns=["estimate"]).assign(
                e_value=lambda d: d["e_value"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
            )
            evalues = _table(ev)
        parts["sensitivity"] = (
            "<h3>E-values (released estimates only)</h3>"
            + evalues
            + "<h3>Restricted to high-quality links</h3>"
            + (_table(hq) if len(hq) else "<p>all links high quality</p>")
            + f"<h3>Negative-control outcome ({html.escape(', '.join(negative_controls))}: care "
            "cannot affect it)</h3>"
            + _table(neg)
            + "<h3>Effect modification: adversity x looked after (KS4)</h3>"
            + _table(em)
            + released
        )
    km_path = rel / "km_yearly.csv"
    parts["km"] = (
        "<p>Cumulative incidence at whole years from the first social-services contact, shown "
        f"only where at least {s.threshold} events happened since the last point shown and "
        f"at least {s.threshold} children are at risk (numbers at risk rounded). The exact "
        "curves stay in results/figures (secure).</p>"
        + "".join(
            _img(layout.figures_dir / f"km_{o}_released.png", f"Kaplan-Meier {o}")
            for o in km_outcomes(analyses)
        )
        + (_table(_read(km_path)) if km_path.exists() else "")
        + released
    )
    diag = layout.results_dir / "diagnostics.csv"
    diag_html = _table(_diagnostics(pd.read_csv(diag))) if diag.exists() else ""
    parts["diagnostics"] = (
        diag_html
        + _img(layout.figures_dir / "love_plot.png", "love plot")
        + "<p>The propensity overlap histogram stays in results/figures (secure): its bins can "
        "hold a few children.</p>" + released
    )
    files = sorted(p.name for p in rel.glob("*")) if rel.exists() else []
    readme = rel / "README.txt"
    parts["disclosure"] = (
        f"<p><strong>{html.escape(s.label)}</strong></p>"
        + "<table><tr><th>file</th><th>status</th></tr>"
        + "".join(f"<tr><td>release/{html.escape(n)}</td><td>{released}</td></tr>" for n in files)
        + "</table>"
        + (f"<p>{html.escape(readme.read_text(encoding='utf-8'))}</p>" if readme.exists() else "")
        + "<p>Full-precision results (results/, the analysis zone) stay in the secure "
        "environment.</p>"
    )
    body = "".join(
        f'<section id="{sid}"><h2>{html.escape(title)}</h2>{parts.get(sid, "<p><em>not available</em></p>")}</section>'
        for sid, title in SECTIONS
    )
    header_class = "restricted" if s.below_floor else "released"
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>CLA vs NLA cohort study</title>"
        f"<style>{CSS}</style></head><body><h1>Children looked after vs children in need: study report</h1>"
        f'<p class="status {header_class}">This report: {html.escape(s.label)}</p>'
        f"<p>Every number here comes from release/ or went through the same disclosure "
        f"control; full-precision results stay in the secure environment.</p>{body}</body></html>"
    )
    tmp = layout.report.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(layout.report)
    return layout.report


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)
