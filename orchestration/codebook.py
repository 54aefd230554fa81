"""The run's codebook: every output table, every column, what it means and its type.

``RUN/codebook.md`` (to read) and ``RUN/codebook.csv`` (one row per column: table, file,
column, type, meaning), written by the report stage. The tables and their columns are read from
the run itself (the DuckDB ``cohort`` schema, ``results/*.csv``, ``release/*.csv``), so the
codebook cannot list a column the run did not write; what each column means comes from
:data:`COLUMNS` (one meaning per column name) and :data:`TABLE_COLUMNS` (where a name means
something else in one table). A column with no meaning declared is written as
``UNDOCUMENTED`` and ``tests/test_outputs.py`` fails on it. The declared analyses (the values
of ``analysis`` in ``results/estimate_analyses.csv``) are listed with their labels from the
run's study config (:mod:`schemas.analyses`).

Nothing is read from the data but column names and types: no values, no counts.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ground.db import connect
from ground.run_layout import RunLayout

UNDOCUMENTED = "UNDOCUMENTED"


@dataclass(frozen=True)
class OutputTable:
    """One output table: its name, the file(s) it is in, its zone and what one row is."""

    name: str
    files: str
    zone: str
    row: str


COHORT_TABLES = (
    OutputTable(
        "cohort.children",
        "analysis_zone.duckdb; cohort/parquet/children.parquet",
        "analysis zone (secure)",
        "one child of the cohort (CLA or NLA), at the index date",
    ),
    OutputTable(
        "cohort.person_time",
        "analysis_zone.duckdb; cohort/parquet/person_time.parquet",
        "analysis zone (secure)",
        "one interval of follow-up of one child for one time-to-event outcome",
    ),
    OutputTable(
        "cohort.school_years",
        "analysis_zone.duckdb; cohort/parquet/school_years.parquet",
        "analysis zone (secure)",
        "one academic year of one child at school",
    ),
    OutputTable(
        "cohort.attrition",
        "analysis_zone.duckdb; cohort/parquet/attrition.parquet",
        "analysis zone (secure)",
        "one inclusion step of the cohort (exact counts; released in release/attrition.csv)",
    ),
)
RESULT_TABLES = (
    OutputTable("estimates", "results/estimates.csv", "results (secure)", "one estimate"),
    OutputTable(
        "estimate_analyses",
        "results/estimate_analyses.csv",
        "results (secure)",
        "the declared analysis of each row of results/estimates.csv",
    ),
    OutputTable(
        "sensitivity", "results/sensitivity.csv", "results (secure)", "an E-value of an estimate"
    ),
    OutputTable(
        "balance",
        "results/balance.csv",
        "results (secure)",
        "one covariate's balance in one propensity model",
    ),
    OutputTable(
        "diagnostics", "results/diagnostics.csv", "results (secure)", "one model diagnostic"
    ),
    OutputTable("table1", "results/table1.csv", "results (secure)", "one baseline characteristic"),
)
RELEASE_TABLES = (
    OutputTable(
        "release.attrition",
        "release/attrition.csv",
        "release (disclosure-controlled)",
        "one inclusion step",
    ),
    OutputTable(
        "release.table1_counts",
        "release/table1_counts.csv",
        "release (disclosure-controlled)",
        "one baseline characteristic",
    ),
    OutputTable(
        "release.estimates",
        "release/estimates.csv",
        "release (disclosure-controlled)",
        "one estimate",
    ),
    OutputTable(
        "release.km_yearly",
        "release/km_yearly.csv",
        "release (disclosure-controlled)",
        "one whole year of one Kaplan-Meier curve (outcome, group)",
    ),
    OutputTable(
        "release.e_values",
        "release/e_values.csv",
        "release (disclosure-controlled)",
        "the E-values of one released estimate (the rows the analyses ask one for)",
    ),
)

_ADVERSITY = "0/1: recorded at a social-care assessment before care entry (NLA: before index)"
_NEW = "measured before the interval or year it adjusts"

# One meaning per column name, whatever table it is in.
COLUMNS: dict[str, str] = {
    # keys and groups
    "person_key": "pseudonymous person key (keyed hash; the same child in every table)",
    "group": "CLA (looked after at some point after the index) or NLA (in need, not looked after)",
    "looked_after": "0/1: looked after (children: ever after index; intervals: during it)",
    # children
    "index_date": "date of first social-services contact (referral): start of follow-up",
    "care_entry_date": "date of first entry to care (empty for NLA)",
    "age_at_index": "age in years at the index date",
    "age_at_entry": "age in years at first entry to care (empty for NLA)",
    "birth_cohort": "year of birth",
    "sex": "sex (code list sex)",
    "ethnicity": "ethnic group (major category)",
    "deprivation_decile": "IMD decile of the home area (1 most deprived)",
    "deprivation_quintile": "IMD quintile of the home area (1 most deprived)",
    "la_code": "local authority code",
    "physical_abuse": _ADVERSITY,
    "parental_mental_ill_health": _ADVERSITY,
    "parental_substance_misuse": _ADVERSITY,
    "domestic_abuse": _ADVERSITY,
    "parental_learning_disability": _ADVERSITY,
    "disability": "0/1: disability recorded before care entry (NLA: before index)",
    "prior_ks2_expected": "0/1: KS2 at the expected standard before care entry (empty: none)",
    "prior_ks2_missing": "0/1: no KS2 result before care entry",
    "prior_emergency_admissions": "emergency admissions before care entry (NLA: index)",
    "care_days": "days looked after during follow-up",
    "care_long": "0/1: the first period in care was long (study config threshold)",
    "care_short": "0/1: the first period in care was short (study config threshold)",
    "placement_moves": "placement changes while looked after",
    "first_placement_group": "group of the first placement (study config placement groups)",
    "ks4_score": "KS4 Attainment 8 score (empty: no KS4 result)",
    "ks4_level2_inclusive": "0/1: level 2 including English and maths at KS4 (empty: no result)",
    "persistent_absence": "0/1: absence rate of at least 10% (children: in the KS4 year)",
    "ks4_care_group": "care before the KS4 year: none, short or long",
    "ks4_care_days": "days looked after before the KS4 year",
    "ks4_placement_moves": "placement changes before the KS4 year",
    "followup_end": "end of follow-up (date)",
    "followup_end_reason": "why follow-up ended",
    "link_quality_min": "lowest match probability among the child's linked records",
    "high_quality_links": "0/1: every linked record at or above the high-quality threshold",
    # person_time
    "outcome": "outcome name (the study config's outcomes)",
    "start_day": "interval start, days since the index date (exclusive)",
    "stop_day": "interval end, days since the index date (inclusive)",
    "event": "0/1: the outcome's first event at stop_day",
    "new_factors_recorded": f"adversities first recorded after the index date; {_NEW}",
    "new_protection_plan": f"0/1: a child-protection plan started after the index; {_NEW}",
    "last_year_absence_rate": f"the previous academic year's absence rate; {_NEW}",
    # school_years
    "academic_year": "academic year (the calendar year of its 1 September)",
    "age": "age in years in the academic year",
    "sessions_possible": "school sessions possible in the year",
    "sessions_absent": "school sessions missed in the year",
    "absence_rate": "sessions_absent / sessions_possible",
    "exclusions": "exclusions in the year",
    "looked_after_share": "share of 1 September - 31 August looked after (end day not in care)",
    "looked_after_this_year": "0/1: looked_after_share > 0",
    "years_since_entry": "whole years from first entry to care to 1 September (empty before)",
    "years_from_index": "academic year minus the index date's academic year",
    # attrition
    "step": "inclusion step number (in order)",
    "description": "the inclusion criterion of the step",
    "n_remaining": "children remaining after the step",
    "n_excluded": "children excluded by the step",
    # estimates
    "contrast": "what is compared (cla_vs_nla, long_vs_nla, ..., <adversity>_x_cla)",
    "method": "estimator (regression, ipw, aipw, cox_tv, gee, ...; _high_quality_links)",
    "scale": "scale of the estimate: mean_difference, risk_difference, odds_ratio, hazard_ratio",
    "estimate": "point estimate on its scale",
    "ci_low": "lower limit of the 95% confidence interval",
    "ci_high": "upper limit of the 95% confidence interval",
    "p_value": "two-sided p-value",
    "n_exposed": "children in the exposed group of the contrast",
    "n_unexposed": "children in the comparison group of the contrast",
    "events_exposed": "children with the event (binary: the outcome) in the exposed group",
    "events_unexposed": "children with the event (binary: the outcome) in the comparison group",
    "warning": "fit warnings (secure only: free text)",
    "note": "why a row is withheld or not estimated (release)",
    "analysis": "the declared analysis (see Analyses below)",
    "e_value": "E-value of the estimate (VanderWeele and Ding)",
    "e_value_ci": "E-value of the confidence limit nearer the null (1 if the interval covers it)",
    # balance and diagnostics
    "covariate": "propensity model term",
    "smd_before": "standardised mean difference before weighting",
    "smd_after": "standardised mean difference after weighting",
    "balanced": "True when |smd_after| is below the balance threshold",
    "item": "diagnostic name",
    "value": "diagnostic value",
    # table 1
    "characteristic": "baseline characteristic (0/1 flags and quintiles; children: group size)",
    "n_CLA": "children with the characteristic, CLA",
    "n_NLA": "children with the characteristic, NLA",
    "pct_CLA": "percentage of CLA children with the characteristic",
    "pct_NLA": "percentage of NLA children with the characteristic",
    "weighted_pct_CLA": "percentage, CLA, weighted by the overall propensity model",
    "weighted_pct_NLA": "percentage, NLA, weighted by the overall propensity model",
    "total": "n_CLA + n_NLA as released (a lower bound when named in bounded)",
    # km
    "year": "whole years from the index date",
    "at_risk": "children still at risk at the year (rounded; empty at year 0)",
    "cumulative_incidence_pct": "Kaplan-Meier cumulative incidence, %, 1 decimal",
    # release format (models.outputs)
    "suppressed": "columns of this row left empty: a suppressed count or a withheld estimate",
    "bounded": "columns of this row holding a bound: total at least, p_value below",
}

# Where a column name means something else in one table.
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "diagnostics": {"analysis": "the analysis or propensity model the diagnostic belongs to"},
    "balance": {"contrast": "the contrast of the propensity model"},
}


@dataclass(frozen=True)
class CodebookRow:
    table: str
    files: str
    column: str
    type: str
    meaning: str


def _meaning(table: str, column: str) -> str:
    short = table.removeprefix("release.").removeprefix("cohort.")
    return TABLE_COLUMNS.get(short, {}).get(column) or COLUMNS.get(column, UNDOCUMENTED)


def _duckdb_columns(layout: RunLayout) -> dict[str, list[tuple[str, str]]]:
    if not layout.analysis_db.exists():
        return {}
    con = connect(layout.analysis_db, read_only=True)
    try:
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name = 'cohort' AND database_name = current_database() "
            "ORDER BY table_name, column_index"
        ).fetchall()
    finally:
        con.close()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        out.setdefault(f"cohort.{table}", []).append((column, str(dtype)))
    return out


def _csv_columns(path: Path) -> list[tuple[str, str]]:
    """Column names and the type a reader infers (pandas, as R's read.csv would)."""
    df = pd.read_csv(path)
    kinds = {"i": "integer", "f": "number", "b": "boolean", "O": "text"}
    return [(str(c), kinds.get(df[c].dtype.kind, str(df[c].dtype))) for c in df.columns]


def codebook_rows(layout: RunLayout) -> list[CodebookRow]:
    """One row per column of every output table the run holds."""
    rows: list[CodebookRow] = []
    cohort = _duckdb_columns(layout)
    for t in COHORT_TABLES:
        for column, dtype in cohort.get(t.name, []):
            rows.append(CodebookRow(t.name, t.files, column, dtype, _meaning(t.name, column)))
    for t in (*RESULT_TABLES, *RELEASE_TABLES):
        path = layout.root / t.files
        if path.exists():
            for column, dtype in _csv_columns(path):
                rows.append(CodebookRow(t.name, t.files, column, dtype, _meaning(t.name, column)))
    return rows


def _analyses(layout: RunLayout) -> list[tuple[str, str, str]]:
    config = layout.cohort_dir / "study_config.yaml"
    if not config.exists():
        return []
    from cohort.config import load_study_config

    return [(a.name, a.estimator, a.label) for a in load_study_config(str(config)).analyses]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def codebook_markdown(layout: RunLayout) -> str:
    rows = codebook_rows(layout)
    lines = [
        "# Codebook",
        "",
        "Every output table of this run and every column: its type as written and what it",
        "means. Secure tables (analysis zone, results/) stay in the secure environment;",
        "release/ is disclosure-controlled (release/README.txt). The same rows, one per column,",
        "are in codebook.csv. Cohort tables: DuckDB `analysis_zone.duckdb` (schema `cohort`)",
        "and Parquet `cohort/parquet/*.parquet` (R: `arrow::read_parquet`; Stata 18:",
        "`import parquet`).",
        "",
        "Release CSVs: every count and estimate is a number. A suppressed count or a withheld",
        "estimate is an empty cell, named in its row's `suppressed` column; a total that is a",
        "lower bound, or a p-value below 0.001 (written 0.001), is named in `bounded`.",
    ]
    for group in (COHORT_TABLES, RESULT_TABLES, RELEASE_TABLES):
        for t in group:
            cols = [r for r in rows if r.table == t.name]
            if not cols:
                continue
            lines += ["", f"## {t.name}", "", f"{t.files}. {t.zone}. One row: {t.row}.", ""]
            lines += ["| column | type | meaning |", "|---|---|---|"]
            lines += [f"| `{r.column}` | {r.type} | {_md(r.meaning)} |" for r in cols]
    analyses = _analyses(layout)
    if analyses:
        lines += [
            "",
            "## Analyses",
            "",
            "The values of `analysis` (study config, `analyses:`).",
            "",
        ]
        lines += ["| analysis | estimator | label |", "|---|---|---|"]
        lines += [f"| `{n}` | `{e}` | {_md(label)} |" for n, e, label in analyses]
    return "\n".join(lines) + "\n"


def codebook_csv(layout: RunLayout) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["table", "files", "column", "type", "meaning"])
    for r in codebook_rows(layout):
        writer.writerow([r.table, r.files, r.column, r.type, r.meaning])
    return buf.getvalue()


def write_codebook(layout: RunLayout) -> tuple[Path, Path]:
    """``RUN/codebook.md`` and ``RUN/codebook.csv``."""
    md, table = layout.root / "codebook.md", layout.root / "codebook.csv"
    md.write_text(codebook_markdown(layout), encoding="utf-8")
    table.write_text(codebook_csv(layout), encoding="utf-8")
    return md, table
