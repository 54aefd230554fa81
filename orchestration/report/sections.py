"""One function per section of report.html. Each takes the :class:`ReportContext` and returns
the section's HTML (without its heading), or None when the run has not produced what it
shows. The order and titles of the sections are :data:`orchestration.report.SECTIONS`.

Every number shown is disclosure-controlled: counts come from ``release/`` or go through the
same control here; estimates are the released ones; figures are drawn from released numbers
(:mod:`orchestration.report.figures`).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

import orchestration.report.data as data
import orchestration.report.figures as figures
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
from models.settings import ModelSettings
from orchestration.report.labels import cell_label, label
from orchestration.report.markup import (
    img_file,
    note,
    png_img,
    read_csv_text,
    read_release,
    status,
    table,
)
from schemas.analyses import Analysis, load_run_analyses

BALANCE_TOP = 15  # covariates shown in each balance plot


@dataclass
class ReportContext:
    """What the sections share: the run's layout and settings, the declared analyses, the
    released estimates with the analysis of each row, and the cohort (loaded once, on first
    use)."""

    layout: RunLayout
    disclosure: DisclosureSettings
    model_settings: ModelSettings
    analyses: tuple[Analysis, ...]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, layout: RunLayout) -> ReportContext:
        path = layout.results_dir / "model_settings.yaml"
        ms = ModelSettings()
        if path.exists():
            ms = ModelSettings.model_validate(
                yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            )
        config = layout.cohort_dir / "study_config.yaml"
        analyses = load_run_analyses(config) if config.exists() else ()
        return cls(layout, ms.disclosure, ms, tuple(analyses))

    @property
    def released(self) -> str:
        return status(self.disclosure.label)

    def release(self, name: str) -> pd.DataFrame | None:
        return read_release(self.layout.release_dir, name)

    @cached_property
    def cohort(self) -> data.Cohort | None:
        if not self.layout.analysis_db.exists():
            return None
        return data.load(self.layout, self.model_settings)

    @cached_property
    def estimates(self) -> pd.DataFrame | None:
        """release/estimates.csv with the analysis, report section and flags of each row."""
        est = self.release("estimates")
        if est is None:
            return None
        return est.join(rows_by_analysis(self.layout, est, self.analyses))

    @cached_property
    def children_released(self) -> dict[str, str]:
        """Released number of children per group (Table 1's "children" row)."""
        t1 = self.release("table1_counts")
        if t1 is None:
            return {}
        kids = t1[t1["characteristic"] == "children"]
        return {g: str(kids[f"n_{g}"].iloc[0]) for g in ("CLA", "NLA")} if len(kids) else {}


def rows_by_analysis(
    layout: RunLayout, est: pd.DataFrame, analyses: tuple[Analysis, ...]
) -> pd.DataFrame:
    """For each row of ``est`` (release/estimates.csv): its analysis, the report section that
    analysis declares, whether its outcome is one of the analysis's negative controls, and
    whether its method is one of the analysis's forest-plot / headline methods, from
    ``results/estimate_analyses.csv``. Rows without a known analysis (a run modelled before
    that file existed) get the section "results_only"."""
    keys = ["outcome", "contrast", "method", "scale"]
    path = layout.results_dir / ESTIMATE_ANALYSES
    named = read_csv_text(path) if path.exists() else pd.DataFrame(columns=[*keys, "analysis"])
    by_name = {a.name: a for a in analyses}
    rows = est[keys].merge(named, on=keys, how="left", validate="one_to_one")
    declared = [by_name.get(n) if isinstance(n, str) else None for n in rows["analysis"]]

    def uses(a: Analysis | None, method: str, field_name: str) -> bool:
        return a is not None and method in {m + a.method_suffix for m in getattr(a, field_name)}

    return pd.DataFrame(
        {
            "analysis": [a.name if a else "" for a in declared],
            "section": [a.report_section if a else "results_only" for a in declared],
            "negative_control": [
                a is not None and o in a.negative_controls
                for a, o in zip(declared, rows["outcome"], strict=True)
            ],
            "forest": [
                uses(a, m, "forest_plot_methods")
                for a, m in zip(declared, rows["method"], strict=True)
            ],
            "headline": [
                uses(a, m, "headline_methods")
                for a, m in zip(declared, rows["method"], strict=True)
            ],
        },
        index=est.index,
    )


COUNT_COLUMNS = ["n_exposed", "n_unexposed", "events_exposed", "events_unexposed"]


def interval_text(r: Any) -> str:
    """ "estimate (low to high)" as released, or "withheld"."""
    if r["estimate"] == WITHHELD:
        return WITHHELD
    if not r["ci_low"]:
        return str(r["estimate"])
    return f"{r['estimate']} ({r['ci_low']} to {r['ci_high']})"


def estimate_table(rows: pd.DataFrame, counts: bool = True) -> str:
    """Released estimate rows with readable outcome, contrast and method names, the estimate
    and its interval in one cell; ``counts``: with the released group sizes and events."""
    shown = pd.DataFrame(
        {
            "outcome": rows["outcome"].map(cell_label),
            "contrast": rows["contrast"].map(cell_label),
            "method": rows["method"].map(cell_label),
            "scale": rows["scale"].map(cell_label),
            "estimate (95% CI)": [interval_text(r) for _, r in rows.iterrows()],
            "p": rows["p_value"],
        }
    )
    if counts:
        for c in COUNT_COLUMNS:
            if c in rows:
                shown[c] = rows[c]
    shown["note"] = rows["note"].map(lambda t: _short_note(t) if t else "")
    return table(shown, text_cols=4)


def _pct(part: str, whole: str) -> str:
    """A percentage from two released counts (never from the unrounded ones)."""
    if SUPPRESSED in (part, whole) or not whole or int(whole) == 0:
        return SUPPRESSED if SUPPRESSED in (part, whole) else ""
    return f"{100 * int(part) / int(whole):.1f}%"


def _num3(v: float) -> str:
    """Three significant figures: the diagnostics table and the plot titles use the same."""
    return "" if pd.isna(v) else f"{float(f'{v:.3g}'):g}"


def scrub_counts(text: str) -> str:
    """Free text with every whole number (a count) replaced by '#'; percentages and decimals
    stay (they are shares of large totals in these messages)."""
    return re.sub(r"(?<![\w.])\d+(?![\w.%])", "#", text)


# --- summary and provenance ------------------------------------------------------------------


def summary(ctx: ReportContext, contents: list[tuple[str, str]]) -> str:
    kids = ctx.children_released
    cohort = ""
    if kids:
        cohort = (
            f"<p>The cohort: {_thousands(kids['CLA'])} children looked after (CLA) and "
            f"{_thousands(kids['NLA'])} children in need who were not looked after (NLA), "
            "counts rounded as released.</p>"
        )
    head = ""
    est = ctx.estimates
    if est is not None:
        top = est[est["headline"]]
        if len(top):
            head = "<h3>Headline estimates</h3>" + estimate_table(top, counts=False)
        if est["note"].str.contains("warning").any():
            head += note(
                "Estimates with a fit warning are marked ⚠ in the forest plot; the warnings "
                "are in results/diagnostics.csv (secure)."
            )
    nav = "".join(f'<li><a href="#{sid}">{html.escape(t)}</a></li>' for sid, t in contents)
    return (
        '<div class="summary"><p>Does being looked after by a local authority change education '
        "and health outcomes compared with children in need who were not looked after, once "
        "pre-care adversity and deprivation are adjusted for? Synthetic linked records of "
        "education, health and social care; care as a time-varying exposure for hospital "
        "outcomes, ATT weighting for attainment.</p>"
        + cohort
        + head
        + f"</div><nav><h3>Contents</h3><ol>{nav}</ol></nav>"
    )


def _thousands(count: str) -> str:
    """A released count with thousands separators ("[c]" as it is)."""
    return f"{int(count):,}" if count.isdigit() else html.escape(count)


def _git_commit_date(commit: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return ""
    try:
        return subprocess.run(
            ["git", "show", "-s", "--format=%cI", commit],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "not found"


def provenance(ctx: ReportContext) -> str | None:
    stamp_path = ctx.layout.root / ".run.json"
    if not stamp_path.exists():
        return None
    stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    code = stamp.get("code", {})
    inputs: dict[str, str] = stamp.get("inputs", {})
    commit = str(code.get("git_commit", "unknown"))
    data_hash = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    rows = [
        ("Code commit", commit + (" (with uncommitted edits)" if code.get("diff_sha256") else "")),
        ("Commit date", _git_commit_date(commit) or "unknown"),
        ("uv.lock SHA-256", str(code.get("lock_file_sha256", ""))),
        ("Delivery SHA-256 (of the files' hashes)", data_hash),
        ("Run settings SHA-256", str(stamp.get("settings", ""))),
        ("Study config SHA-256", _sha(ctx.layout.cohort_dir / "study_config.yaml")),
        ("Disclosure rule", ctx.disclosure.label),
    ]
    files = pd.DataFrame(sorted(inputs.items()), columns=["input file", "SHA-256"])
    return (
        table(pd.DataFrame(rows, columns=["item", "value"]))
        + f"<details><summary>Input files ({len(inputs)})</summary>{table(files)}</details>"
        + note(
            "Everything needed to rerun this run (settings, study config, package versions, "
            'seeds, timings and the date of each stage) is in <a href="manifest.json">'
            "manifest.json</a>, written beside this page when the run ends; `cohort reproduce "
            "RUN` reruns it and compares the outputs. This page carries no build time, so a "
            "rerun of the same run reproduces it byte for byte."
        )
    )


# --- data quality and linkage --------------------------------------------------------------------


def delivery_sections(
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
    data_quality = (
        table(dq_table)
        + "<h3>Failed expectations</h3>"
        + failed_expectations(dq, s)
        + "<h3>Identifier completeness</h3>"
        + table(comp)
    )
    if lr is None:
        return data_quality, ""

    def rate_table(rows: list[tuple[str, Cell, str, str]]) -> str:
        return table(
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


def failed_expectations(dq: dict[str, Any], s: DisclosureSettings) -> str:
    """Each Great Expectations expectation that failed, by source: its name, column and the
    records it found unexpected (suppressed below the threshold, else rounded)."""
    rows = []
    for src, v in dq.items():
        for e in v["expectations"]:
            if e["success"]:
                continue
            n = int(e.get("unexpected_count") or 0)
            rows.append(
                {
                    "source": src,
                    "expectation": e["expectation"],
                    "column": e.get("column", ""),
                    "count_unexpected": SUPPRESSED
                    if 0 < n < s.threshold
                    else str(int(np.round(n / s.rounding) * s.rounding)),
                }
            )
    if not rows:
        return "<p>Every expectation was met.</p>"
    return table(pd.DataFrame(rows), text_cols=3) + note(
        "Records breaking a row rule are quarantined (quarantine.* in the linkage zone); the "
        "per-source validation report is validation/dq_report.md (secure)."
    )


def linkage_charts(ctx: ReportContext) -> str:
    """The linkage model's charts (its parameters: no records), as the linkage stage drew them."""
    charts = sorted(ctx.layout.figures_dir.glob("linkage_*.png"))
    if not charts:
        return ""
    return "<h3>Linkage model</h3>" + "".join(
        f"<h4>{html.escape(label(p.stem.removeprefix('linkage_')))}</h4>" + img_file(p, p.stem)
        for p in charts
    )


# --- cohort --------------------------------------------------------------------------------------


def attrition(ctx: ReportContext) -> str | None:
    att = ctx.release("attrition")
    if att is None:
        return None
    steps = [
        figures.FlowStep(r.description, r.n_remaining, r.n_excluded)
        for r in att.itertuples(index=False)
    ]
    return (
        png_img(figures.attrition_flow(steps), "flow diagram of the cohort's inclusion steps")
        + note(
            "Each box: an inclusion criterion and the children meeting it and every criterion "
            f"above; beside each arrow, the children it excluded. Counts rounded to "
            f"{ctx.disclosure.rounding}; counts below {ctx.disclosure.threshold} (and counts "
            "that would reveal them by subtraction) suppressed."
        )
        + f"<details><summary>Attrition table</summary>{table(att)}</details>"
        + ctx.released
    )


def table1(ctx: ReportContext) -> str | None:
    t1 = ctx.release("table1_counts")
    if t1 is None:
        return None
    kids = t1[t1["characteristic"] == "children"]
    whole = {g: (kids[f"n_{g}"].iloc[0] if len(kids) else "") for g in ("CLA", "NLA")}
    body = pd.concat([kids, t1[t1["characteristic"] != "children"]])
    smds = pd.DataFrame(columns=["characteristic", "smd_before", "smd_after"])
    cont = pd.DataFrame(columns=["characteristic", "CLA", "NLA"])
    fit_warnings: list[str] = []
    if ctx.cohort is not None:
        names = [*body["characteristic"], *data.CONTINUOUS]
        weights, fit_warnings = data.whole_cohort_weights(ctx.cohort)
        smds = data.standardised_differences(ctx.cohort, names, weights)
        cont = data.continuous_summary(ctx.cohort, ctx.disclosure)
    smd_of = smds.set_index("characteristic")
    rows = []

    def smd_cells(name: str) -> dict[str, str]:
        if name not in smd_of.index:
            return {"SMD before": "", "SMD after weighting": ""}
        r = smd_of.loc[name]
        return {
            "SMD before": f"{r['smd_before']:.2f}",
            "SMD after weighting": "" if pd.isna(r["smd_after"]) else f"{r['smd_after']:.2f}",
        }

    for r in body.itertuples(index=False):
        name = str(r.characteristic)
        row = {"characteristic": label(name)}
        for g in ("CLA", "NLA"):
            n = str(getattr(r, f"n_{g}"))
            row[f"n_{g}"] = n
            row[f"% or mean (SD) {g}"] = "" if name == "children" else _pct(n, whole[g])
        rows.append({**row, **smd_cells(name)})
    for r in cont.itertuples(index=False):
        name = str(r.characteristic)
        row = {"characteristic": label(name) + ", mean (SD)"}
        for g in ("CLA", "NLA"):
            row[f"n_{g}"] = ""
            row[f"% or mean (SD) {g}"] = str(getattr(r, g))
        rows.append({**row, **smd_cells(name)})
    df = pd.DataFrame(rows)
    df = df[
        [
            "characteristic", "n_CLA", "% or mean (SD) CLA", "n_NLA", "% or mean (SD) NLA",
            "SMD before", "SMD after weighting",
        ]
    ]  # fmt: skip
    return (
        note(
            "CLA: children looked after during follow-up; NLA: children in need who were not. "
            "n_CLA / n_NLA: children with the characteristic (released counts); percentages "
            "are computed from the released counts. SMD: standardised mean difference CLA - NLA "
            "(pooled SD), before and after the ATT weights of a propensity model for ever being "
            "looked after fitted on this whole cohort; |SMD| below "
            f"{ctx.model_settings.balance_threshold:g} is usually read as balanced. The weighted "
            "percentages stay in results/table1.csv (secure): in the looked-after group they "
            "equal the unweighted ones, so they would give the exact counts back."
        )
        + table(df)
        + "".join(
            f'<p class="note warn">Whole-cohort propensity model: {html.escape(fit_warning(w))}</p>'
            for w in fit_warnings
        )
        + ctx.released
    )


def fit_warning(text: str, shown: int = 8) -> str:
    """A propensity fit's warning for the page: a list of imbalanced terms under readable
    labels, the first ``shown`` of them; whole numbers scrubbed."""
    head, sep, terms = text.partition("): ")
    if not sep or "imbalance" not in head:
        return scrub_counts(text)
    names = [t.strip() for t in terms.split(",") if t.strip()]
    more = f" and {len(names) - shown} more terms" if len(names) > shown else ""
    return scrub_counts(head) + "): " + "; ".join(label(n) for n in names[:shown]) + more


# --- estimates -----------------------------------------------------------------------------------


def _float(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def same_as_ipw(est: pd.DataFrame) -> pd.Series:
    """True on AIPW rows whose released estimate and interval equal the IPW row's."""
    keys = ["outcome", "contrast", "scale"]
    cols = ["estimate", "ci_low", "ci_high"]
    ipw = est[est["method"] == "ipw"].set_index(keys)[cols]
    same = []
    for r in est.itertuples(index=False):
        k = (r.outcome, r.contrast, r.scale)
        same.append(
            r.method == "aipw"
            and r.estimate != WITHHELD
            and k in ipw.index
            and list(ipw.loc[k]) == [r.estimate, r.ci_low, r.ci_high]
        )
    return pd.Series(same, index=est.index, dtype=bool)


def _short_note(text: str) -> str:
    if text.startswith("withheld"):
        return "withheld (too few children or events)"
    if "warning" in text:
        return "fit warnings"
    return text


def estimates(ctx: ReportContext) -> str | None:
    est = ctx.estimates
    if est is None:
        return None
    same = same_as_ipw(est)
    forest = est[est["forest"]]
    panel_keys = list(dict.fromkeys(zip(forest["outcome"], forest["scale"], strict=True)))
    rows = []
    for outcome, scale in panel_keys:
        part = forest[(forest["outcome"] == outcome) & (forest["scale"] == scale)]
        one_contrast = part["contrast"].nunique() == 1
        panel = f"{label(outcome)}: {label(scale).lower()}"
        if one_contrast:
            panel += f" ({label(part['contrast'].iloc[0])})"
        for i, r in part.iterrows():
            notes = [_short_note(r["note"])] if r["note"] else []
            if same[i]:
                notes.append("= IPW (see below)")
            rows.append(
                figures.ForestRow(
                    panel=panel,
                    scale=scale,
                    label=label(r["method"])
                    if one_contrast
                    else f"{label(r['contrast'])}: {label(r['method'])}",
                    estimate=_float(r["estimate"]),
                    low=_float(r["ci_low"]),
                    high=_float(r["ci_high"]),
                    text=interval_text(r),
                    note="; ".join(notes),
                )
            )
    plot = png_img(figures.forest_plot(rows), "forest plot of the main estimates") if rows else ""
    why = ""
    if same.any():
        why = note(
            "<strong>Why AIPW equals IPW on some rows.</strong> The ATT weights are fitted by "
            "covariate balancing (entropy balancing): the weighted NLA means of the propensity "
            "model's covariates equal the CLA means exactly. AIPW adds to IPW the weighted "
            "mean difference of the outcome model's predictions, and for a linear outcome "
            "model in those same covariates that difference is zero, so the two agree to the "
            "released precision. This is expected, not a copying error; for a binary outcome "
            "(logistic outcome model) the two differ slightly."
            if ctx.model_settings.propensity_method == "balancing"
            else "AIPW and IPW agree to the released precision on the rows marked."
        )
    main = est[(est["section"] == "estimates").to_numpy()]
    return (
        note(
            "One row per released estimate the analyses send to the forest plot "
            "(schemas/analyses.py, forest_plot_methods); each panel has its own axis. ⚠ marks "
            "a row with a warning; withheld rows have no point."
        )
        + plot
        + why
        + "<h3>All main estimates</h3>"
        + estimate_table(main)
        + ctx.released
    )


def kaplan_meier(ctx: ReportContext) -> str | None:
    if ctx.cohort is None:
        return None
    declared = km_outcomes(ctx.analyses)
    outcomes = data.time_to_event_outcomes(ctx.cohort, declared)
    km = data.km_every_outcome(ctx.cohort, outcomes, ctx.disclosure)
    kids = ctx.children_released
    parts = []
    for outcome in outcomes:
        curves = []
        for g in ("CLA", "NLA"):
            k = km[(km["outcome"] == outcome) & (km["group"] == g)]
            at_risk = [str(a) for a in k["at_risk"]]
            if len(at_risk) and at_risk[0] == "" and kids.get(g):
                at_risk[0] = kids[g]  # year 0: the released group size (Table 1)
            curves.append(
                figures.KmCurve(
                    g,
                    [int(y) for y in k["year"]],
                    [float(c) for c in k["cumulative_incidence_pct"]],
                    at_risk,
                )
            )
        title = f"{label(outcome)}: cumulative incidence by group"
        rows = km[km["outcome"] == outcome].drop(columns=["outcome"])
        heading = f'<h3 id="km-{html.escape(outcome)}">{html.escape(label(outcome))}</h3>'
        if all(len(c.years) <= 1 for c in curves):
            parts.append(
                heading
                + f"<p>Too few events in each group to show a point under the rule (at least "
                f"{ctx.disclosure.threshold} events between points).</p>"
            )
            continue
        parts.append(
            heading
            + png_img(figures.kaplan_meier(title, curves), f"Kaplan-Meier {outcome}")
            + f"<details><summary>Numbers shown</summary>{table(rows)}</details>"
        )
    s = ctx.disclosure
    return (
        note(
            "Every time-to-event outcome. Cumulative incidence at whole years from the first "
            f"social-services contact, shown only where at least {s.threshold} events happened "
            f"since the last point shown and at least {s.threshold} children are at risk; "
            f"numbers at risk rounded to {s.rounding} (year 0: the group sizes of Table 1). "
            "Points at whole years, joined by straight lines (the steps between them are not "
            "shown). "
            "The exact curves stay in results/figures (secure)."
        )
        + "".join(parts)
        + ctx.released
    )


# --- diagnostics, sensitivity, disclosure ----------------------------------------------------------

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


def diagnostics_table(diag: pd.DataFrame) -> pd.DataFrame:
    keep = diag[diag["item"].astype(str).str.startswith(DIAGNOSTIC_ITEMS)].copy()
    keep = keep[~keep["analysis"].astype(str).str.startswith("sensitivity")]
    keep["value"] = [_num3(v) for v in keep["value"].astype(float)]
    return keep.fillna("")


def diagnostics(ctx: ReportContext) -> str | None:
    path = ctx.layout.results_dir / "diagnostics.csv"
    if not path.exists():
        return None
    diag = pd.read_csv(path)
    parts = []
    overlaps: list[data.Overlap] = []
    if ctx.cohort is not None:
        overlaps, notes = data.analysed_overlaps(ctx.cohort, ctx.analyses, diag, ctx.disclosure)
        parts += [note(html.escape(n)) for n in notes]
    bal_path = ctx.layout.results_dir / "balance.csv"
    bal = pd.read_csv(bal_path) if bal_path.exists() else pd.DataFrame(columns=["contrast"])
    for ov in overlaps:
        name = label(ov.contrast)
        title = (
            f"Preference-score overlap: {name} (AUC {_num3(ov.auc)}, "
            f"equipoise {_num3(ov.equipoise)})"
        )
        parts.append(
            f"<h3>{html.escape(name)}</h3>"
            + png_img(
                figures.overlap(
                    title,
                    ov.edges,
                    {
                        f"exposed ({name.split(' vs ')[0].lower()})"
                        if k == "exposed"
                        else "unexposed (NLA)": v
                        for k, v in ov.shares.items()
                    },
                ),
                title,
            )
        )
        b = bal[bal["contrast"] == ov.contrast]
        if len(b):
            top = b.reindex(b["smd_before"].abs().sort_values(ascending=False).index).head(
                BALANCE_TOP
            )
            parts.append(
                png_img(
                    figures.balance(
                        f"Covariate balance: {name} (top {len(top)} of {len(b)} terms by "
                        "|SMD| before weighting)",
                        [label(c) for c in top["covariate"]],
                        top["smd_before"].to_list(),
                        top["smd_after"].to_list(),
                        ctx.model_settings.balance_threshold,
                    ),
                    f"balance {ov.contrast}",
                )
            )
    return (
        note(
            "For each population an effect was estimated in (children with every KS4 outcome "
            "measured, in the contrast's exposed and unexposed groups): the preference-score "
            "distributions by group in tenths (a bin's share from rounded counts; bins of "
            f"fewer than {ctx.disclosure.threshold} children hatched and left empty) and the "
            "balance of the covariates that differed most before weighting. The AUC and "
            "equipoise are those of the table below."
        )
        + "".join(parts)
        + "<h3>Diagnostics table</h3>"
        + table(diagnostics_table(diag))
        + note(
            "The exact propensity overlap histogram stays in results/figures (secure): its "
            "bins can hold a few children."
        )
        + ctx.released
    )


def sensitivity(ctx: ReportContext) -> str | None:
    est = ctx.estimates
    if est is None:
        return None
    hq = est[(est["section"] == "high_quality_links").to_numpy()]
    neg = est[est["negative_control"].to_numpy()]
    em = est[(est["section"] == "effect_modification").to_numpy()]
    negative_controls = sorted({o for a in ctx.analyses for o in a.negative_controls})
    sens_path = ctx.layout.results_dir / "sensitivity.csv"
    evalues = ""
    keys = ["outcome", "contrast", "method", "scale"]
    if sens_path.exists():
        ev = pd.read_csv(sens_path).merge(est[est["estimate"] != WITHHELD][keys], on=keys)
        ev = ev.drop(columns=["estimate"])
        for c in ("e_value", "e_value_ci"):
            if c in ev:  # runs made before e_value_ci was written have only the first
                ev[c] = ev[c].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
        for c in keys:
            ev[c] = ev[c].map(cell_label)
        evalues = table(ev, text_cols=4)
    return (
        "<h3>E-values (released estimates only)</h3>"
        + evalues
        + "<h3>Restricted to high-quality links</h3>"
        + (estimate_table(hq) if len(hq) else "<p>all links high quality</p>")
        + f"<h3>Negative-control outcome ({html.escape(', '.join(negative_controls))}: care "
        "cannot affect it)</h3>"
        + estimate_table(neg)
        + "<h3>Effect modification: adversity x looked after (KS4)</h3>"
        + estimate_table(em)
        + ctx.released
    )


def disclosure(ctx: ReportContext) -> str:
    rel = ctx.layout.release_dir
    files = sorted(p.name for p in rel.glob("*")) if rel.exists() else []
    readme = rel / "README.txt"
    return (
        f"<p><strong>{html.escape(ctx.disclosure.label)}</strong></p>"
        + "<table><tr><th>file</th><th>status</th></tr>"
        + "".join(
            f"<tr><td>release/{html.escape(n)}</td><td>{ctx.released}</td></tr>" for n in files
        )
        + "</table>"
        + (f"<p>{html.escape(readme.read_text(encoding='utf-8'))}</p>" if readme.exists() else "")
        + "<p>Full-precision results (results/, the analysis zone) stay in the secure "
        "environment. Figures and numbers computed by the report itself (Table 1 means and "
        "standardised differences, Kaplan-Meier curves of every time-to-event outcome, the "
        "binned overlap) follow the same rules.</p>"
    )
