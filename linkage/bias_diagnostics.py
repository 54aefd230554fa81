"""Linkage-bias diagnostics without a gold standard (Harron et al. 2017, "A guide to evaluating
linkage quality for the analysis of linked data", IJE 46:1699: compare the characteristics of linked and
unlinked records, and match rates across groups).

Written by the linkage stage to ``RUN/linkage/linkage_bias.csv`` (release-safe: counts
rounded to 5, a group with fewer than 10 records suppressed; shares from the rounded counts;
no identifier, only groups). One row per (table, source, characteristic, group):

* ``records_to_register``: each source's records, by record characteristics every record
  carries (sex; age band at the record's event; calendar year of the event; whether the
  record holds an NHS number, the identifier whose absence drives missed links), with the
  share *not* linked to any population-register person. A characteristic whose unlinked
  share differs across groups is one whose analyses can be biased by missed links.
* ``register_persons_with_health_record``: register persons by deprivation quintile,
  ethnicity and whether a looked-after record is linked to them, with the share that have at
  least one linked hospital admission. Differences mix true differences in admissions with
  differential missed links; the synthetic truth separates the two
  (benchmarks/linkage_error.py).
"""

from __future__ import annotations

import duckdb
import pandas as pd

from ground.db import quote_ident

SPINE = "population_register"
#: each source's event date (the age and year of a record are measured at it)
EVENT_DATE = {
    "population_register": "period_start",
    "hospital_admissions": "admission_date",
    "emergency_department": "arrival_date",
    "looked_after_episodes": "episode_start",
    "care_support_census": "referral_date",
}
ROUND_TO = 5
MIN_RECORDS = 10


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    schema, name = table.split(".")
    return {
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ?",
            [schema, name],
        ).fetchall()
    }


def _records_to_register(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    parts = []
    for source, date_col in EVENT_DATE.items():
        table = f"staging.{source}"
        cols = _columns(con, table)
        if not {"sex", "date_of_birth", date_col} <= cols:
            continue
        nhs = (
            "CASE WHEN s.nhs_number IS NULL THEN 'no' ELSE 'yes' END"
            if "nhs_number" in cols
            else "NULL"
        )
        ev = f"s.{quote_ident(date_col)}"
        parts.append(
            f"""SELECT ? AS source, s.sex,
                   CASE WHEN date_diff('year', s.date_of_birth, {ev}) < 5 THEN '0-4'
                        WHEN date_diff('year', s.date_of_birth, {ev}) < 11 THEN '5-10'
                        WHEN date_diff('year', s.date_of_birth, {ev}) < 16 THEN '11-15'
                        ELSE '16+' END AS age_band,
                   CAST(year({ev}) AS VARCHAR) AS event_year,
                   {nhs} AS has_nhs_number,
                   rp.person_key IN (SELECT person_key FROM spine) AS linked
            FROM {quote_ident("staging")}.{quote_ident(source)} s
            JOIN linkage.record_person rp ON rp.source = ? AND rp.record_id = s.record_id"""
        )
    params: list[str] = []
    for source, date_col in EVENT_DATE.items():
        cols = _columns(con, f"staging.{source}")
        if {"sex", "date_of_birth", date_col} <= cols:
            params += [source, source]
    if not parts:
        return pd.DataFrame()
    con.execute(
        "CREATE OR REPLACE TEMP TABLE spine AS SELECT DISTINCT person_key "
        "FROM linkage.record_person WHERE source = ?",
        [SPINE],
    )
    con.execute("CREATE OR REPLACE TEMP TABLE record_links AS " + " UNION ALL ".join(parts), params)
    out = []
    for characteristic in ("sex", "age_band", "event_year", "has_nhs_number"):
        df = con.execute(
            f"""SELECT source, CAST({characteristic} AS VARCHAR) AS grp, count(*) AS records,
                       count(*) FILTER (WHERE NOT linked) AS unlinked
                FROM record_links WHERE {characteristic} IS NOT NULL
                GROUP BY ALL ORDER BY ALL"""
        ).df()
        out.append(df.assign(characteristic=characteristic))
    con.execute("DROP TABLE record_links")
    return pd.concat(out, ignore_index=True).assign(table="records_to_register")


def _register_persons(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    con.execute(
        """CREATE OR REPLACE TEMP TABLE reg_person AS
        SELECT rp.person_key,
               first(s.deprivation_decile ORDER BY s.period_start) AS decile,
               first(s.ethnicity ORDER BY s.period_start) AS ethnicity
        FROM staging.population_register s
        JOIN linkage.record_person rp ON rp.source = 'population_register'
             AND rp.record_id = s.record_id
        GROUP BY 1"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE reg_flags AS
        SELECT p.*,
               p.person_key IN (SELECT person_key FROM linkage.record_person
                                WHERE source = 'looked_after_episodes') AS looked_after,
               p.person_key IN (SELECT person_key FROM linkage.record_person
                                WHERE source = 'hospital_admissions') AS has_admission
        FROM reg_person p"""
    )
    groups = {
        "deprivation_quintile": "CAST((decile + 1) // 2 AS VARCHAR)",
        "ethnicity": "ethnicity",
        "looked_after": "CASE WHEN looked_after THEN 'yes' ELSE 'no' END",
    }
    out = []
    for characteristic, sql in groups.items():
        df = con.execute(
            f"""SELECT {sql} AS grp, count(*) AS records,
                       count(*) FILTER (WHERE NOT has_admission) AS unlinked
                FROM reg_flags GROUP BY 1 ORDER BY 1"""
        ).df()
        out.append(df.assign(characteristic=characteristic, source=SPINE))
    con.execute("DROP TABLE reg_flags")
    con.execute("DROP TABLE reg_person")
    return pd.concat(out, ignore_index=True).assign(table="register_persons_with_health_record")


def release_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Counts rounded to 5; a group under 10 records suppressed (counts and share empty)."""
    out = df.copy()
    small = out["records"] < MIN_RECORDS
    for c in ("records", "unlinked"):
        out[c] = (out[c] / ROUND_TO).round().astype("Int64") * ROUND_TO
        out.loc[small, c] = pd.NA
    rec = out["records"].astype("Float64")
    out["share"] = (out["unlinked"].astype("Float64") / rec.where(rec > 0)).round(3)
    return out


def linkage_bias_diagnostics(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Both tables (see the module docstring) from a linkage-zone connection after linking,
    release-safe. ``share`` is the unlinked share (records: not linked to a register person;
    register persons: no linked hospital admission)."""
    df = pd.concat([_records_to_register(con), _register_persons(con)], ignore_index=True)
    df = df.rename(columns={"grp": "group"})
    df = release_safe(df)
    return df[["table", "source", "characteristic", "group", "records", "unlinked", "share"]]
