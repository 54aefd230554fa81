"""DuckDB connections with bounded memory, safe SQL text, and atomic table replacement.

No text from settings, config files, CSV headers or paths is pasted into SQL as it comes:
values go in as ``?`` parameters; where DuckDB needs literal SQL text, it is built by one of
the functions here from a checked value (:func:`memory_size` re-renders a parsed size,
:func:`quote_ident` quotes identifiers, :func:`sql_string` quotes a string literal).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import duckdb
from pydantic import AfterValidator

from ground.errors import ConfigError

log = logging.getLogger(__name__)

LINKAGE_ZONE_FILE = "linkage_zone.duckdb"
# DuckDB's spill files of a connection to the linkage zone hold identifiers: they live in this
# folder beside it (part of the linkage zone, mode 0700), never in the run's shared tmp folder
LINKAGE_SCRATCH_DIR = "linkage_zone.tmp"

_MEMORY_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)
_UNITS = {u.lower(): u for u in ("B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB")}


def memory_size(text: object, *, key: str = "memory limit") -> str:
    """A DuckDB memory size (``4GB``, ``512 MiB``, ``1.5GB``), checked and re-rendered.

    The result is built from the parsed number and a unit from a fixed list, so it is safe to
    hand to DuckDB; anything else is a :class:`ConfigError` naming ``key``.
    """
    m = _MEMORY_SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None or float(m.group(1)) <= 0:
        shown = repr(text) if len(repr(text)) <= 40 else repr(text)[:37] + "..."
        raise ConfigError(
            f"{key}: {shown} is not a memory size; write a positive number and a unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 4GB"
        )
    return m.group(1) + _UNITS[m.group(2).lower()]


def _memory_size_setting(value: str) -> str:
    try:
        return memory_size(value, key="value")
    except ConfigError as e:  # pydantic adds the key's path to a ValueError
        raise ValueError(str(e).removeprefix("value: ")) from None


MemorySize = Annotated[str, AfterValidator(_memory_size_setting)]
"""A settings field holding a DuckDB memory size: validated when the settings load."""


def sql_string(text: str | os.PathLike[str]) -> str:
    """``text`` as a SQL string literal (``'...'``, quotes doubled), for the few statements
    that take no parameters. NUL bytes and line breaks are refused (no path or name has them)."""
    s = os.fspath(text)
    if any(ch in s for ch in "\x00\n\r"):
        raise ConfigError(
            "a path or name given to the database holds a NUL byte or a line break; "
            "rename it without them"
        )
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class DuckDBSettings:
    """Resource limits for every DuckDB connection the pipeline opens."""

    memory_limit: str = "6GB"  # checked by :func:`memory_size` when a connection opens
    threads: int = 2
    temp_directory: str | None = None
    preserve_insertion_order: bool = True


def connect(
    path: str | Path, *, settings: DuckDBSettings | None = None, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with the project's memory, thread and temp-directory limits.

    A connection to the linkage zone (``linkage_zone.duckdb``) spills into the zone's scratch
    folder (:func:`linkage_scratch_dir`), whatever ``settings.temp_directory`` says: its spill
    files hold identifiers.
    """
    settings = settings or DuckDBSettings()
    limit = memory_size(settings.memory_limit, key="DuckDB memory_limit")
    threads = int(settings.threads)
    if threads < 1:
        raise ConfigError(f"DuckDB threads: {threads} is not a positive number of threads")
    temp_directory = settings.temp_directory
    if Path(path).name == LINKAGE_ZONE_FILE:
        temp_directory = str(private_dir(linkage_scratch_dir(Path(path).parent)) / "duckdb")
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute("SET memory_limit = ?", [limit])
    con.execute("SET threads = ?", [threads])
    if temp_directory:
        con.execute("SET temp_directory = ?", [str(private_dir(Path(temp_directory)))])
    if not settings.preserve_insertion_order:
        con.execute("SET preserve_insertion_order = false")
    return con


def linkage_scratch_dir(run_root: str | Path) -> Path:
    """The linkage zone's scratch folder ``RUN/linkage_zone.tmp/``: DuckDB spill files of
    connections to the linkage zone (identifiers). Part of the linkage zone: mode 0700, removed
    at the start and end of the linkage stage (:func:`linkage_scratch`)."""
    return Path(run_root) / LINKAGE_SCRATCH_DIR


def private_dir(path: Path) -> Path:
    """``path`` created (with missing parents) and set to mode 0700 (owner only)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def clear_linkage_scratch(run_root: str | Path) -> None:
    """Remove the linkage zone's scratch folder (what a killed or failed stage left there)."""
    scratch = linkage_scratch_dir(run_root)
    if scratch.is_symlink() or scratch.is_file():
        scratch.unlink()
    elif scratch.exists():
        shutil.rmtree(scratch)


@contextmanager
def linkage_scratch(run_root: str | Path) -> Iterator[Path]:
    """An empty, owner-only scratch folder of the linkage zone for one stage: whatever an
    earlier stage left there is removed first, and the folder is removed when the stage ends,
    also on failure."""
    clear_linkage_scratch(run_root)
    try:
        yield private_dir(linkage_scratch_dir(run_root))
    finally:
        clear_linkage_scratch(run_root)


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


def quote_column(name: str) -> str:
    """Quote one SQL identifier as it is (a ``.`` in it is part of the name)."""
    return '"' + name.replace('"', '""') + '"'


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
