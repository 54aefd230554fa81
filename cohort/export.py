"""Parquet copies of the cohort tables, for Stata, R or any tool that cannot open DuckDB.

``RUN/cohort/parquet/<table>.parquet``, one file per table of the ``cohort`` schema, written by
the build stage. Analysis zone: the pseudonymous ``person_key`` and content columns only, as in
the DuckDB tables (no identifier reaches the cohort tables). Rows are sorted by every column, so
the same tables give the same rows in the same order. R: ``arrow::read_parquet()``; Stata 18+:
``import parquet``; older Stata: via R or Python.
"""

from __future__ import annotations

from pathlib import Path

from ground.db import connect, quote_ident, sql_string
from ground.run_layout import RunLayout

COHORT_TABLES = ("children", "person_time", "school_years", "attrition")


def parquet_dir(layout: RunLayout) -> Path:
    return layout.cohort_dir / "parquet"


def export_parquet(layout: RunLayout) -> list[Path]:
    """Write every cohort table as Parquet (zstd) under ``RUN/cohort/parquet/``; the paths."""
    out = parquet_dir(layout)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.parquet"):
        stale.unlink()
    written = []
    con = connect(layout.analysis_db, read_only=True)
    try:
        for table in COHORT_TABLES:
            path = out / f"{table}.parquet"
            con.execute(
                f"COPY (SELECT * FROM {quote_ident('cohort.' + table)} ORDER BY ALL) "
                f"TO {sql_string(path)} (FORMAT parquet, COMPRESSION zstd)"
            )
            written.append(path)
    finally:
        con.close()
    return written
