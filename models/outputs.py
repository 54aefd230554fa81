"""What the model stage writes: results/ (full precision, secure), the figures and release/
(disclosure-controlled). Which rows go to the forest plots, which get an E-value and which
outcomes get Kaplan-Meier curves is read from the analyses' declarations
(:mod:`schemas.analyses`), through ``results/estimate_analyses.csv``, which names the analysis
of every row of ``results/estimates.csv``."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ground.db import connect
from ground.run_layout import RunLayout
from models.disclosure import (
    SUPPRESSED,
    WITHHELD,
    DisclosureSettings,
    Release,
    control_release,
    estimate_group,
    format_estimate,
    km_yearly,
    row_keys,
    stratum_family,
)
from models.effects import e_value
from models.gmethods import years_since_entry_figure
from models.sensitivity import e_value_ci
from models.settings import ADVERSITIES
from models.survival import kaplan_meier_by_group
from schemas.analyses import Analysis

DIAGNOSTIC_COLUMNS = ["analysis", "item", "value", "warning"]
ESTIMATE_ANALYSES = "estimate_analyses.csv"


def rows_of(
    estimates: pd.DataFrame, row_analysis: Sequence[str], analyses: Sequence[Analysis], methods: str
) -> pd.Series:
    """True for the rows whose analysis lists their method in its ``methods`` field
    (``forest_plot_methods``, ``headline_methods`` or ``e_value_methods``)."""
    by_name = {a.name: a for a in analyses}
    return pd.Series(
        [
            m in {x + by_name[n].method_suffix for x in getattr(by_name[n], methods)}
            for n, m in zip(row_analysis, estimates["method"], strict=True)
        ],
        index=estimates.index,
        dtype=bool,
    )


def km_outcomes(analyses: Sequence[Analysis]) -> list[str]:
    """The outcomes of the declared Kaplan-Meier analyses, in declaration order."""
    out: list[str] = []
    for a in analyses:
        if a.estimator == "kaplan_meier" and not isinstance(a.outcomes, str):
            out += [o for o in a.outcomes if o not in out]
    return out


def sensitivity_table(
    estimates: pd.DataFrame,
    row_analysis: Sequence[str],
    analyses: Sequence[Analysis],
    children: pd.DataFrame,
) -> pd.DataFrame:
    """E-values of the rows the analyses ask one for; a mean difference is put on the
    standardised scale with the outcome's SD in the cohort."""
    sens = estimates[rows_of(estimates, row_analysis, analyses, "e_value_methods")].copy()

    def sd(outcome: str) -> float | None:
        col = children[outcome] if outcome in children else pd.Series(dtype=float)
        return float(col.std()) if col.notna().any() else None

    sens["e_value"] = [
        e_value(r.estimate, r.ci_low, r.ci_high, r.scale, sd(r.outcome)) for r in sens.itertuples()
    ]
    # the E-value of the confidence limit nearer the null (1 when the interval covers it):
    # how strong unmeasured confounding must be to move the interval to the null
    sens["e_value_ci"] = [
        e_value_ci(r.estimate, r.ci_low, r.ci_high, r.scale, sd=sd(r.outcome))
        for r in sens.itertuples()
    ]
    return sens[["outcome", "contrast", "method", "scale", "estimate", "e_value", "e_value_ci"]]


def write_results(
    layout: RunLayout,
    estimates: pd.DataFrame,
    row_analysis: Sequence[str],
    sensitivity: pd.DataFrame,
    balance: list[pd.DataFrame],
    diagnostics: list[dict[str, Any]],
) -> None:
    """results/estimates.csv, estimate_analyses.csv, sensitivity.csv, balance.csv,
    diagnostics.csv (full precision)."""
    res = layout.results_dir
    estimates.to_csv(res / "estimates.csv", index=False, float_format="%.6g")
    estimates[["outcome", "contrast", "method", "scale"]].assign(
        analysis=list(row_analysis)
    ).to_csv(res / ESTIMATE_ANALYSES, index=False)
    sensitivity.to_csv(res / "sensitivity.csv", index=False, float_format="%.6g")
    if balance:
        pd.concat(balance).to_csv(res / "balance.csv", index=False, float_format="%.6g")
    pd.DataFrame(diagnostics, columns=DIAGNOSTIC_COLUMNS).to_csv(
        res / "diagnostics.csv", index=False, float_format="%.6g"
    )


def table_one(children: pd.DataFrame, weights: np.ndarray | None) -> pd.DataFrame:
    """Baseline characteristics by group: counts and percentages, weighted percentages."""
    rows = []
    cla = (children["group"] == "CLA").to_numpy()
    items: list[tuple[str, np.ndarray]] = [
        (a, children[a].to_numpy(float))
        for a in [*ADVERSITIES, "parental_learning_disability", "disability"]
    ]
    items += [("female", (children["sex"] == "F").to_numpy(float))]
    items += [
        (f"deprivation_quintile_{q}", (children["deprivation_quintile"] == q).to_numpy(float))
        for q in range(1, 6)
    ]
    missing_dep = children["deprivation_quintile"].isna().to_numpy()
    if missing_dep.any():  # so that the quintile rows add up to the children row
        items += [("deprivation_quintile_missing", missing_dep.astype(float))]
    for name, v in items:
        row: dict[str, Any] = {"characteristic": name}
        for label, sel in (("CLA", cla), ("NLA", ~cla)):
            row[f"n_{label}"] = int(v[sel].sum())
            row[f"pct_{label}"] = round(100 * float(v[sel].mean()), 1) if sel.any() else np.nan
            if weights is not None:
                row[f"weighted_pct_{label}"] = (
                    round(100 * float(np.average(v[sel], weights=weights[sel])), 1)
                    if weights[sel].sum() > 0
                    else np.nan
                )
        rows.append(row)
    rows.append({"characteristic": "children", "n_CLA": int(cla.sum()), "n_NLA": int((~cla).sum())})
    return pd.DataFrame(rows)


def savefig(fig: Any, path: os.PathLike[str] | str) -> None:
    """Save without a timestamp or software tag (the same figure, the same bytes) and close."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)


FOREST_PLOTS = (
    ("hazard_ratio", "forest_hazard_ratios.png"),
    ("mean_difference", "forest_ks4.png"),
    ("risk_difference", "forest_level2.png"),
)


def write_figures(
    layout: RunLayout,
    children: pd.DataFrame,
    pt: pd.DataFrame,
    estimates: pd.DataFrame,
    row_analysis: Sequence[str],
    analyses: Sequence[Analysis],
    w_all: np.ndarray | None,
    release: Release,
) -> None:
    """Forest plots of the released estimates the analyses send there (withheld ones left
    out), full-precision Kaplan-Meier curves (secure) and their coarsened, released versions
    from km_yearly.csv."""
    import matplotlib.pyplot as plt

    groups = [
        estimate_group(*k)
        for k in zip(estimates["outcome"], estimates["contrast"], estimates["method"], strict=True)
    ]
    forest = rows_of(estimates, row_analysis, analyses, "forest_plot_methods")
    kept = [g not in release.withheld for g in groups]
    main = estimates[forest & pd.Series(kept, index=estimates.index)].dropna(subset=["estimate"])
    for scale, fname in FOREST_PLOTS:
        m = main[main["scale"] == scale]
        if m.empty:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(m) + 1.2))
        y = np.arange(len(m))
        ax.errorbar(
            m["estimate"],
            y,
            xerr=[m["estimate"] - m["ci_low"], m["ci_high"] - m["estimate"]],
            fmt="o",
        )
        ax.axvline(1.0 if scale == "hazard_ratio" else 0.0, color="grey", linestyle="--")
        if scale == "hazard_ratio":
            ax.set_xscale("log")
        ax.set_yticks(y, [f"{r.outcome} ({r.method})" for r in m.itertuples()], fontsize=8)
        ax.set_title(f"CLA vs NLA: {scale.replace('_', ' ')}")
        savefig(fig, layout.figures_dir / fname)
    # the marginal structural model's effect on yearly absence by years since entry (released rows)
    years_since_entry_figure(
        estimates[pd.Series(kept, index=estimates.index)],
        layout.figures_dir / "absence_by_years_since_entry.png",
    )
    km = release.tables.get("km_yearly", pd.DataFrame())
    for outcome in km_outcomes(analyses):
        e = first_events(children, pt, outcome)
        fig, axes = plt.subplots(1, 2 if w_all is not None else 1, figsize=(10, 4), squeeze=False)
        kaplan_meier_by_group(children, e, None, axes[0][0], f"{outcome}: Kaplan-Meier")
        if w_all is not None:
            kaplan_meier_by_group(children, e, w_all, axes[0][1], f"{outcome}: weighted")
        savefig(fig, layout.figures_dir / f"km_{outcome}.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        for g in ("CLA", "NLA"):
            k = km[(km["outcome"] == outcome) & (km["group"] == g)] if len(km) else km
            if len(k):
                ax.step(k["year"], k["cumulative_incidence_pct"], where="post", label=g)
        ax.set_xlabel("whole years from first social-services contact")
        ax.set_ylabel("cumulative incidence (%)")
        ax.set_title(f"{outcome}: Kaplan-Meier at whole years (disclosure-controlled)")
        ax.legend()
        savefig(fig, layout.figures_dir / f"km_{outcome}_released.png")


def first_events(children: pd.DataFrame, pt: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """Each child's first event of ``outcome`` as a date."""
    ev = pt[(pt["event"] == 1) & (pt["outcome"] == outcome)][["person_key", "stop_day"]].merge(
        children[["person_key", "index_date"]], on="person_key"
    )
    ev["event_date"] = pd.to_datetime(ev["index_date"]) + pd.to_timedelta(
        ev["stop_day"] - 1, unit="D"
    )
    return ev[["person_key", "event_date"]]


def km_yearly_table(
    children: pd.DataFrame, pt: pd.DataFrame, outcomes: Sequence[str], d: DisclosureSettings
) -> pd.DataFrame:
    """Coarsened Kaplan-Meier cumulative incidence per outcome and group (see
    :func:`models.disclosure.km_yearly`); the same durations as the secure curves."""
    parts = []
    for outcome in outcomes:
        df = children[["person_key", "group", "index_date", "followup_end"]].merge(
            first_events(children, pt, outcome), on="person_key", how="left"
        )
        start = pd.to_datetime(df["index_date"])
        t_end = (pd.to_datetime(df["followup_end"]) - start).dt.days + 1
        t_ev = (pd.to_datetime(df["event_date"]) - start).dt.days + 1
        duration = np.where(t_ev.notna(), t_ev, t_end) / 365.25
        for g in ("CLA", "NLA"):
            sel = (df["group"] == g).to_numpy()
            k = km_yearly(duration[sel], t_ev.notna().to_numpy()[sel], d)
            parts.append(k.assign(outcome=outcome, group=g))
    cols = ["outcome", "group", "year", "at_risk", "cumulative_incidence_pct"]
    return pd.concat(parts)[cols] if parts else pd.DataFrame(columns=cols)


def write_release(
    layout: RunLayout,
    estimates: pd.DataFrame,
    t1: pd.DataFrame,
    children: pd.DataFrame,
    pt: pd.DataFrame,
    disclosure: DisclosureSettings,
    km_outcomes: Sequence[str] = ("self_harm", "emergency_admission"),
) -> Release:
    """Write release/: every count table of the run controlled together (secondary
    suppression across tables, see :mod:`models.disclosure`), the coarsened KM table of
    ``km_outcomes`` and a README stating the rules and the label."""
    rel = layout.release_dir
    con = connect(layout.analysis_db, read_only=True)
    try:
        att = con.sql("SELECT * FROM cohort.attrition ORDER BY step").df()
    finally:
        con.close()
    release = control_release(
        {
            "attrition": att,
            "table1_counts": t1[["characteristic", "n_CLA", "n_NLA"]].fillna(0),
            "estimates": estimates,
        },
        disclosure,
    )
    withhold_strata_together(release)
    release.tables["km_yearly"] = km_yearly_table(children, pt, km_outcomes, disclosure)
    sensitivity = layout.results_dir / "sensitivity.csv"  # written by write_results just before
    if sensitivity.exists():
        release.tables["e_values"] = e_value_release(
            pd.read_csv(sensitivity), release.tables["estimates"]
        )
    for stale in rel.glob("*.csv"):
        stale.unlink()
    for name, df in release.tables.items():
        write_release_csv(df, rel / f"{name}.csv")
    (rel / "README.txt").write_text(release.readme() + STRATA_README, encoding="utf-8")
    return release


# --- the numbers the report's study questions add (orchestration/report/answers.py) ----------

STRATA_NOTE = "withheld: another stratum of this comparison has too few children or events"
STRATA_README = (
    "Effects by stratum (with and without an adversity, most and less deprived, and the "
    "difference between them; the levels of a conditional-effect summary) are withheld "
    "together: when one stratum has too few children or events, its sibling strata and the "
    "difference are withheld too, so that no stratum's counts follow from the whole by "
    "subtraction. e_values.csv: the E-values of the released estimates only, 2 decimals.\n"
)


def withhold_strata_together(release: Release) -> set[str]:
    """Withhold every row of a stratified comparison when one of its rows is withheld (see
    :func:`stratum_family`): the strata add up to the whole comparison, whose counts are
    released, so a released sibling would give a withheld stratum's counts back by
    subtraction. Changes ``release`` in place (estimates, counts, note, ``withheld``) and
    returns the estimate groups it withheld."""
    est = release.tables.get("estimates")
    if est is None or est.empty:
        return set()
    keys = row_keys("estimates", est)
    families = [
        None if (f := stratum_family(str(c))) is None else f"{o}|{f}|{k.rsplit('|', 1)[1]}"
        for o, c, k in zip(est["outcome"], est["contrast"], keys, strict=True)
    ]
    hit = {f for f, k in zip(families, keys, strict=True) if f and k in release.withheld}
    extra = {k for f, k in zip(families, keys, strict=True) if f in hit} - release.withheld
    rows = [i for i, k in enumerate(keys) if k in extra]
    for i in rows:
        for c in ESTIMATE_VALUE_COLUMNS:
            est.iat[i, est.columns.get_loc(c)] = WITHHELD
        for c in ("n_exposed", "n_unexposed", "events_exposed", "events_unexposed"):
            j = est.columns.get_loc(c)
            if str(est.iat[i, j]).strip() not in ("", "nan", "None"):
                est.iat[i, j] = SUPPRESSED
        est.iat[i, est.columns.get_loc("note")] = STRATA_NOTE
    release.withheld |= extra
    return extra


E_VALUE_COLUMNS = ["outcome", "contrast", "method", "scale", "e_value", "e_value_ci"]


def e_value_release(sensitivity: pd.DataFrame, released: pd.DataFrame) -> pd.DataFrame:
    """release/e_values.csv: results/sensitivity.csv's E-values (of the estimate and of the
    confidence limit nearer the null) for the rows whose estimate is released, 2 decimals (3
    significant figures from 100): an E-value is a function of a released estimate and its
    interval, so it discloses nothing the estimate does not."""
    keys = ["outcome", "contrast", "method", "scale"]
    shown = released.loc[released["estimate"] != WITHHELD, keys].astype(str)
    ev = sensitivity.astype({k: str for k in keys}).merge(shown, on=keys, how="inner")
    for c in ("e_value", "e_value_ci"):
        ev[c] = [
            format_estimate(float(v), "hazard_ratio") if c in ev and pd.notna(v) else ""
            for v in (ev[c] if c in ev else [np.nan] * len(ev))
        ]
    return ev.reindex(columns=E_VALUE_COLUMNS).fillna("")


# --- the release file format ----------------------------------------------------------------------
#
# In memory (models.disclosure.Release) every released cell is text: "[c]" for a suppressed
# count, "withheld" for a withheld estimate, "1230+" for a total with a suppressed part, "<0.001"
# for a small p-value. In release/*.csv every column is numeric or plain text, as Stata and R
# read it: such a cell is written empty (suppressed, withheld) or as its number (a bound), and
# two text columns at the end of each row name the columns concerned.

SUPPRESSED_COLUMN = "suppressed"  # columns of this row left empty: suppressed or withheld
BOUNDED_COLUMN = "bounded"  # columns of this row whose number is a bound: total >=, p_value <
ESTIMATE_VALUE_COLUMNS = ("estimate", "ci_low", "ci_high", "p_value")
_AT_LEAST = re.compile(r"(\d+)\+")
_BELOW = re.compile(r"<(\d*\.?\d+)")


def release_file_frame(table: pd.DataFrame) -> pd.DataFrame:
    """A released table (text cells) in the file format: numbers as numbers, suppressed and
    withheld cells empty and named in ``suppressed``, bounds as numbers named in ``bounded``."""
    out = table.astype(object).copy()
    suppressed: list[list[str]] = [[] for _ in range(len(table))]
    bounded: list[list[str]] = [[] for _ in range(len(table))]
    for j, col in enumerate(table.columns):
        for i, value in enumerate(table[col]):
            text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else value
            text = str(text).strip()
            if text in (SUPPRESSED, WITHHELD):
                out.iat[i, j] = ""
                suppressed[i].append(str(col))
            elif bound := _AT_LEAST.fullmatch(text) or _BELOW.fullmatch(text):
                out.iat[i, j] = bound[1]
                bounded[i].append(str(col))
    out[SUPPRESSED_COLUMN] = [" ".join(s) for s in suppressed]
    out[BOUNDED_COLUMN] = [" ".join(b) for b in bounded]
    return out


def write_release_csv(table: pd.DataFrame, path: Path) -> None:
    """One released table as ``release/<name>.csv`` in the file format
    (:func:`release_file_frame`); cells are written as the disclosure control formatted them
    (estimates at their scale's precision, counts rounded), never re-printed from floats."""
    release_file_frame(table).to_csv(path, index=False)


def read_release_csv(path: Path) -> pd.DataFrame:
    """``release/<name>.csv`` back as the released text cells of :class:`Release`: a suppressed
    count ``[c]``, a withheld estimate ``withheld``, a total that is a lower bound ``1230+``, a
    p-value bound ``<0.001``. The one reader of the release format (report, checks, tests)."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if SUPPRESSED_COLUMN not in raw or BOUNDED_COLUMN not in raw:
        raise ValueError(f"{path}: not a release table (no {SUPPRESSED_COLUMN!r} column)")
    out = raw.drop(columns=[SUPPRESSED_COLUMN, BOUNDED_COLUMN])
    for i, (gone, bound) in enumerate(
        zip(raw[SUPPRESSED_COLUMN], raw[BOUNDED_COLUMN], strict=True)
    ):
        for col in gone.split():
            out.at[i, col] = WITHHELD if col in ESTIMATE_VALUE_COLUMNS else SUPPRESSED
        for col in bound.split():
            out.at[i, col] = f"<{out.at[i, col]}" if col == "p_value" else f"{out.at[i, col]}+"
    return out
