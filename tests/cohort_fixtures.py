"""Spec-test helpers: hand-written patients as small text tables, straight into an analysis zone.

A test writes its patients per analysis table and its expected rows in the same form (ehrQL's
spec tests are the model)::

    patients = {
        "persons": '''
            person_key | week_of_birth
            P1         | 2005-01-03
        ''',
        "care_support_census": '''
            person_key | referral_date | parent_domestic_abuse
            P1         | 2012-03-01    | true
        ''',
    }
    expected = table('''
        person_key | domestic_abuse
        P1         | 1
    ''')
    assert derived("index_rows", patients, expected) == expected

A table is a header line and one line per row, cells split on ``|``; an empty cell is NULL;
lines of only ``-``, ``+`` and ``|`` are ignored. Input cells are text that DuckDB casts to the
column's type (``2012-03-01``, ``true``, ``30.0``); columns a test leaves out take
:data:`DEFAULTS`. :func:`derived` runs the cohort steps up to the table under test on an
in-memory database and returns that table's rows as text in the same form, so the comparison
is by column name and a failing assert shows which cell differs (:class:`Derivation` does the
same for several tables of the same patients, running each step once).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from cohort.build import cohort_steps
from cohort.config import StudyConfig, load_study_config
from ground.db import quote_column, quote_ident
from schemas.contracts import SOURCES

Rows = list[dict[str, str | None]]
Patients = dict[str, str]

SQL_TYPE = {
    "string": "VARCHAR",
    "date": "DATE",
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
}
PERSON_COLUMNS = {
    "person_key": "VARCHAR",
    "week_of_birth": "DATE",
    "sex": "VARCHAR",
    "ethnicity": "VARCHAR",
    "area_code": "VARCHAR",
    "deprivation_decile": "BIGINT",
    "link_quality_min": "DOUBLE",
    "high_quality_links": "INTEGER",
    "n_records": "BIGINT",
}
LA = "W06000015"
# What a column a test leaves out holds (any other column is NULL). Also: a census row's
# census_year defaults to the year after its referral and its assessment_date to the referral
# date (the referral's own assessment), an episode's reason_episode_ended to E4A when it has
# an end, and record_id to the table's prefix and the row's number.
DEFAULTS: dict[str, dict[str, str]] = {
    "persons": {
        "sex": "F",
        "ethnicity": "WBRI",
        "area_code": "A1",
        "deprivation_decile": "3",
        "link_quality_min": "1.0",
        "high_quality_links": "1",
        "n_records": "5",
    },
    "population_register": {
        "area_code": "A1",
        "deprivation_decile": "3",
        "la_code": LA,
        "ethnicity": "WBRI",
    },
    "care_support_census": {
        "la_code": LA,
        "category_of_need": "N1",
        "child_protection_registered": "false",
        "parent_domestic_abuse": "false",
        "parent_mental_ill_health": "false",
        "parent_substance_misuse": "false",
        "parent_learning_disability": "false",
        "parent_physical_ill_health": "false",
        "disability": "false",
    },
    "looked_after_episodes": {
        "la_code": LA,
        "legal_status": "C2",
        "placement_type": "U4",
        "reason_episode_started": "S",
    },
    "school_census": {
        "school_id": "S1",
        "la_code": LA,
        "sessions_possible": "300",
        "sessions_authorised_absence": "20",
        "sessions_unauthorised_absence": "20",
        "fixed_exclusions": "0",
        "permanent_exclusion": "false",
    },
}


def table(text: str) -> Rows:
    """Parse a text table: a header line of column names, then one line per row."""
    lines = [
        line.strip()
        for line in text.strip().splitlines()
        if line.strip() and not re.fullmatch(r"[-+|\s]+", line)
    ]
    if not lines:
        raise ValueError("a table needs at least a header line of column names")
    header = [c.strip() for c in lines[0].split("|")]
    rows: Rows = []
    for n, line in enumerate(lines[1:], start=2):
        cells = [c.strip() or None for c in line.split("|")]
        if len(cells) != len(header):
            raise ValueError(f"line {n} has {len(cells)} cells, the header {len(header)}: {line!r}")
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def analysis_columns() -> dict[str, dict[str, str]]:
    """Every analysis table's columns and SQL types, as the link stage writes them."""
    tables = {"persons": dict(PERSON_COLUMNS)}
    for name, contract in SOURCES.items():
        tables[name] = {
            "person_key": "VARCHAR",
            "record_id": "VARCHAR",
            "link_method": "VARCHAR",
            "match_probability": "DOUBLE",
        } | {c.name: SQL_TYPE[c.dtype] for c in contract.columns if c.role == "content"}
    return tables


def _filled(name: str, i: int, row: dict[str, str | None]) -> dict[str, str | None]:
    full: dict[str, str | None] = dict(DEFAULTS.get(name, {}))
    if name != "persons":
        full |= {
            "record_id": f"{name[:2].upper()}{i:05d}",
            "link_method": "deterministic",
            "match_probability": "1.0",
        }
    if name == "care_support_census" and row.get("referral_date"):
        full["census_year"] = str(int(str(row["referral_date"])[:4]) + 1)
        full["assessment_date"] = str(row["referral_date"])
    if name == "looked_after_episodes" and row.get("episode_end"):
        full["reason_episode_ended"] = "E4A"
    return full | row


def load_analysis_zone(con: duckdb.DuckDBPyConnection, patients: Patients) -> None:
    """Create schema ``analysis`` with every table (empty unless ``patients`` has rows)."""
    columns = analysis_columns()
    unknown = set(patients) - set(columns)
    if unknown:
        raise ValueError(f"no analysis table named {sorted(unknown)}; tables: {sorted(columns)}")
    con.execute("CREATE SCHEMA analysis")
    for name, cols in columns.items():
        target = quote_ident(f"analysis.{name}")
        con.execute(
            f"CREATE TABLE {target} ("
            + ", ".join(f"{quote_column(c)} {t}" for c, t in cols.items())
            + ")"
        )
        for i, row in enumerate(table(patients.get(name, "person_key"))):
            full = _filled(name, i, row)
            extra = set(full) - set(cols)
            if extra:
                raise ValueError(f"analysis.{name} has no column {sorted(extra)}")
            con.execute(
                f"INSERT INTO {target} ({', '.join(quote_column(c) for c in full)}) "
                f"VALUES ({', '.join('?' * len(full))})",
                list(full.values()),
            )


def write_analysis_zone(path: Path, patients: Patients) -> None:
    """An analysis-zone file holding ``patients`` (for tests of the whole ``build_cohort``)."""
    con = duckdb.connect(str(path))
    try:
        load_analysis_zone(con, patients)
    finally:
        con.close()


def as_text(value: Any) -> str | None:
    """A derived value as a table cell: NULL is None, booleans true/false, dates ISO."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


class Derivation:
    """``patients`` in an in-memory analysis zone, and the cohort steps run on demand: asking
    for a table runs only the steps up to it that have not run yet."""

    def __init__(self, patients: Patients, config: StudyConfig | None = None) -> None:
        self.steps = cohort_steps(config or load_study_config())
        self.con = duckdb.connect()
        load_analysis_zone(self.con, patients)
        self.made = 0

    def rows(self, step: str, columns: Rows | Sequence[str], *, where: str = "TRUE") -> Rows:
        """``step``'s rows, the given columns only (or the expected rows' columns), ordered by
        those columns in turn; ``where`` filters them (SQL written in the test, e.g.
        ``"outcome = 'self_harm'"``)."""
        names = list(columns[0]) if columns and isinstance(columns[0], dict) else list(columns)
        if not names:
            raise ValueError("name the columns to compare (or give expected rows with a header)")
        todo = self.steps.until(step)
        for s in todo[self.made :]:
            s.run(self.con)
        self.made = max(self.made, len(todo))
        return read_rows(self.con, step, names, where=where)


def derived(
    step: str,
    patients: Patients,
    columns: Rows | Sequence[str],
    *,
    where: str = "TRUE",
    config: StudyConfig | None = None,
) -> Rows:
    """Run the cohort steps up to ``step`` over ``patients`` and return ``step``'s rows (see
    :meth:`Derivation.rows`); a test that checks several tables of the same patients can keep
    one :class:`Derivation` instead."""
    return Derivation(patients, config).rows(step, columns, where=where)


def read_rows(
    con: duckdb.DuckDBPyConnection, name: str, columns: Sequence[str], *, where: str = "TRUE"
) -> Rows:
    """Table ``name``'s rows as text cells, the given columns only, ordered by them in turn."""
    cursor = con.execute(
        f"SELECT {', '.join(quote_column(c) for c in columns)} FROM {quote_ident(name)} "
        f"WHERE {where} ORDER BY ALL"
    )
    return [{c: as_text(v) for c, v in zip(columns, row, strict=True)} for row in cursor.fetchall()]
