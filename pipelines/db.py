"""DuckDB connections with bounded memory, and atomic table replacement."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DuckDBSettings:
    """Resource limits for every DuckDB connection the pipeline opens."""

    memory_limit: str = "6GB"
    threads: int = 2
    temp_directory: str | None = None
    preserve_insertion_order: bool = True


def connect(
    path: str | Path, *, settings: DuckDBSettings | None = None, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with the project's memory, thread and temp-directory limits."""
    settings = settings or DuckDBSettings()
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute(f"SET memory_limit = '{settings.memory_limit}'")
    con.execute(f"SET threads = {int(settings.threads)}")
    if settings.temp_directory:
        Path(settings.temp_directory).mkdir(parents=True, exist_ok=True)
        con.execute("SET temp_directory = ?", [settings.temp_directory])
    if not settings.preserve_insertion_order:
        con.execute("SET preserve_insertion_order = false")
    return con


@contextmanager
def connection(
    path: str | Path, *, settings: DuckDBSettings | None = None, read_only: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, settings=settings, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def quote_ident(name: str) -> str:
    """Quote a SQL identifier (``schema.table`` is split and each part quoted)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def replace_table_atomically(con: duckdb.DuckDBPyConnection, target: str, select_sql: str) -> None:
    """Create ``target`` from ``select_sql`` so readers never see a half-written table.

    The new table is built under a temporary name, then the old one is dropped and the new one
    renamed inside one transaction. If building fails, ``target`` is untouched.
    """
    schema, _, table = target.rpartition(".")
    schema = schema or "main"
    tmp = f"{table}__building"
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    con.execute(f"DROP TABLE IF EXISTS {quote_ident(schema + '.' + tmp)}")
    con.execute(f"CREATE TABLE {quote_ident(schema + '.' + tmp)} AS {select_sql}")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            f"DROP TABLE IF EXISTS {quote_ident(target if '.' in target else 'main.' + target)}"
        )
        con.execute(f"ALTER TABLE {quote_ident(schema + '.' + tmp)} RENAME TO {quote_ident(table)}")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
