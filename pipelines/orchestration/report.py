"""``RUN/report.html``: one self-contained page (no network, images inlined) from stage outputs.

Aggregates only: every table comes from a stage's summary files, never from personal rows.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from pipelines.run_layout import RunLayout

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


def _status(released: bool) -> str:
    return (
        '<span class="status released">released: disclosure-controlled</span>'
        if released
        else '<span class="status restricted">full precision: not for release</span>'
    )


def build_report(layout: RunLayout) -> Path:
    """Write ``report.html`` from the files of a finished run."""
    parts: dict[str, str] = {}
    dq_path = layout.validation_dir / "dq_report.json"
    if dq_path.exists():
        dq = json.loads(dq_path.read_text(encoding="utf-8"))
        rows = [
            {
                "source": s,
                "rows read": v["rows_read"],
                "staged": v["rows_staged"],
                "quarantined": v["rows_quarantined"],
                "conserved": "yes" if v["conserved"] else "NO",
                "GX expectations met": f"{sum(e['success'] for e in v['expectations'])}/{len(v['expectations'])}",
                "warnings": "; ".join(v["warnings"]),
            }
            for s, v in dq.items()
        ]
        comp = [
            {"source": s, **{k: f"{x:.1%}" for k, x in v["identifier_completeness"].items()}}
            for s, v in dq.items()
        ]
        parts["data-quality"] = (
            _table(pd.DataFrame(rows))
            + "<h3>Identifier completeness</h3>"
            + _table(pd.DataFrame(comp).fillna(""))
            + _status(False)
        )
    lr_path = layout.linkage_dir / "linkage_report.json"
    if lr_path.exists():
        lr = json.loads(lr_path.read_text(encoding="utf-8"))
        by_src = pd.DataFrame(
            [
                {"source": k, "linked to register": f"{v:.1%}"}
                for k, v in lr["link_rate_to_spine_by_source"].items()
            ]
        )
        sub = "".join(
            f"<h3>School-census link rate by {html.escape(g)}</h3>"
            + _table(
                pd.DataFrame(rows).assign(link_rate=lambda d: d["link_rate"].map("{:.1%}".format))
            )
            for g, rows in lr["link_rate_to_spine_by_subgroup_school_census"].items()
            if g != "birth_year"
        )
        parts["linkage"] = (
            f"<p>Match threshold {lr['thresholds']['match_threshold']}, high-quality threshold "
            f"{lr['thresholds']['high_quality_threshold']}.</p>"
            + _table(by_src)
            + sub
            + _status(False)
        )
    att = layout.release_dir / "attrition.csv"
    if att.exists():
        parts["attrition"] = _table(pd.read_csv(att, dtype=str)) + _status(True)
    t1 = layout.results_dir / "table1.csv"
    if t1.exists():
        parts["table1"] = (
            "<p>Percentages by group; weighted columns use the ATT weights of the CLA-vs-NLA "
            "propensity model.</p>" + _table(pd.read_csv(t1), "{:.1f}") + _status(False)
        )
    est_path = layout.results_dir / "estimates.csv"
    if est_path.exists():
        est = pd.read_csv(est_path)
        main = est[
            est["contrast"].isin(
                [
                    "cla_vs_nla",
                    "long_vs_nla",
                    "short_vs_nla",
                    "per_placement_move",
                    "looked_after_year",
                ]
            )
            & ~est["method"].str.endswith("_high_quality_links")
        ]
        parts["estimates"] = (
            _table(main.drop(columns=["warning"]).fillna(""))
            + _status(False)
            + "".join(
                _img(layout.figures_dir / f, f)
                for f in ("forest_ks4.png", "forest_level2.png", "forest_hazard_ratios.png")
            )
        )
        em = est[est["contrast"].str.contains("_x_cla|_in_cla|_in_nla", regex=True)]
        sens = layout.results_dir / "sensitivity.csv"
        hq = est[est["method"].str.endswith("_high_quality_links")]
        neg = est[est["outcome"] == "appendicitis"]
        parts["sensitivity"] = (
            "<h3>E-values</h3>"
            + (_table(pd.read_csv(sens).fillna("")) if sens.exists() else "")
            + "<h3>Restricted to high-quality links</h3>"
            + (_table(hq.drop(columns=["warning"])) if len(hq) else "<p>all links high quality</p>")
            + "<h3>Negative-control outcome (appendicitis: care cannot affect it)</h3>"
            + _table(neg.drop(columns=["warning"]))
            + "<h3>Effect modification: adversity x looked after (KS4)</h3>"
            + _table(em.drop(columns=["warning"]))
            + _status(False)
        )
    parts["km"] = "".join(
        _img(layout.figures_dir / f"km_{o}.png", f"Kaplan-Meier {o}")
        for o in ("self_harm", "emergency_admission")
    )
    diag = layout.results_dir / "diagnostics.csv"
    diag_html = _table(pd.read_csv(diag).fillna("")) if diag.exists() else ""
    parts["diagnostics"] = (
        diag_html
        + _img(layout.figures_dir / "propensity_overlap.png", "propensity overlap")
        + _img(layout.figures_dir / "love_plot.png", "love plot")
    )
    rel = sorted(p.name for p in layout.release_dir.glob("*"))
    readme = layout.release_dir / "README.txt"
    parts["disclosure"] = (
        "<table><tr><th>table</th><th>status</th></tr>"
        + "".join(f"<tr><td>{html.escape(n)}</td><td>{_status(True)}</td></tr>" for n in rel)
        + "".join(
            f"<tr><td>{n}</td><td>{_status(False)}</td></tr>"
            for n in (
                "results/estimates.csv",
                "results/table1.csv",
                "results/balance.csv",
                "results/diagnostics.csv",
            )
        )
        + "</table>"
        + (f"<p>{html.escape(readme.read_text(encoding='utf-8'))}</p>" if readme.exists() else "")
    )
    body = "".join(
        f'<section id="{sid}"><h2>{html.escape(title)}</h2>{parts.get(sid, "<p><em>not available</em></p>")}</section>'
        for sid, title in SECTIONS
    )
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>CLA vs NLA cohort study</title>"
        f"<style>{CSS}</style></head><body><h1>Children looked after vs children in need: study report</h1>"
        f"<p>Tables marked full precision stay inside the "
        f"secure environment; only release/ leaves it.</p>{body}</body></html>"
    )
    tmp = layout.report.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(layout.report)
    return layout.report
