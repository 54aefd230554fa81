"""Hand-written patients straight into the analysis zone, for ehrQL-style spec tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from schemas.contracts import SOURCES

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


def write_analysis_zone(path: Path, tables: dict[str, list[dict[str, Any]]]) -> None:
    """Create every analysis table (empty unless rows are given) and insert the rows."""
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA analysis")
    con.execute(
        "CREATE TABLE analysis.persons ("
        + ", ".join(f"{k} {v}" for k, v in PERSON_COLUMNS.items())
        + ")"
    )
    for row in tables.get("persons", []):
        full = {
            "sex": "F",
            "ethnicity": "WBRI",
            "area_code": "A1",
            "deprivation_decile": 3,
            "link_quality_min": 1.0,
            "high_quality_links": 1,
            "n_records": 5,
            **row,
        }
        cols = list(full)
        con.execute(
            f"INSERT INTO analysis.persons ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [full[c] for c in cols],
        )
    for name, contract in SOURCES.items():
        cols = {
            "person_key": "VARCHAR",
            "record_id": "VARCHAR",
            "link_method": "VARCHAR",
            "match_probability": "DOUBLE",
        }
        cols |= {c.name: SQL_TYPE[c.dtype] for c in contract.columns if c.role == "content"}
        con.execute(
            f"CREATE TABLE analysis.{name} (" + ", ".join(f"{k} {v}" for k, v in cols.items()) + ")"
        )
        for i, row in enumerate(tables.get(name, [])):
            full = {
                "record_id": f"{name[:2].upper()}{i:05d}",
                "link_method": "deterministic",
                "match_probability": 1.0,
                **row,
            }
            keys = list(full)
            con.execute(
                f"INSERT INTO analysis.{name} ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                [full[k] for k in keys],
            )
    con.close()
