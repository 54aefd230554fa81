"""Run-folder state: an exclusive lock, the folder's stamp, stage markers and what each stage
wrote (with content hashes), and the pseudonymisation key check value.

* ``RUN/.run.json`` (the stamp): the code version, input hashes and settings hash the folder was
  made with. A rerun with the same stamp resumes; a different one is refused unless the user asks
  to ``--resume`` (keep what is still valid) or ``--replace`` (empty the folder first).
* ``RUN/.stages/<stage>.json`` (markers): the stage's input fingerprint and the content hash of
  every output it wrote. A stage is skipped only if both still match.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import hmac
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ground.errors import RunStateError

STAGES = ("validate", "link", "build", "model", "report")
STAMP_FILE = ".run.json"
LOCK_FILE = ".lock"
# entries only a run folder has: a folder holding one of them may be resumed or replaced
RUN_FOLDER_SIGNS = (STAMP_FILE, ".stages", "linkage_zone.duckdb", "manifest.json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RunLock:
    """An exclusive advisory lock on ``RUN/.lock``; a second run on the same folder fails fast.

    The lock is held by the open file descriptor, so it disappears with the process (no stale
    locks after a kill).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fh: Any = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a+")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise RunStateError(
                f"run folder {self.path.parent} is in use by {holder}; wait for it to finish or use "
                "another --out folder"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()}")
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def expand_run_dir(run_dir: str, today: datetime.date | None = None) -> str:
    """``run_dir`` with ``{date}`` replaced by today's date (YYYY-MM-DD), so a scheduled
    deployment writes one folder per run day (``runs/scheduled/{date}``)."""
    day = (today or datetime.date.today()).isoformat()
    return run_dir.replace("{date}", day)


# --- the folder's stamp -------------------------------------------------------------------


def is_run_folder(root: Path) -> bool:
    return any((root / name).exists() for name in RUN_FOLDER_SIGNS)


def _contents(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name != LOCK_FILE] if root.is_dir() else []


def check_out_folder(root: Path) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that is not a run folder
    (before anything is written into it)."""
    if root.exists() and not root.is_dir():
        raise RunStateError(f"--out {root} is a file, not a folder; choose a new folder")
    if _contents(root) and not is_run_folder(root):
        raise RunStateError(
            f"--out {root} is not empty and is not a run folder; choose an empty or new folder "
            "(nothing was written)"
        )


def read_stamp(root: Path) -> dict[str, Any] | None:
    p = root / STAMP_FILE
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def stamp_differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between a folder's stamp and this run's, in words (empty: the same)."""
    if old is None:  # made by the single-stage commands or an older version
        return ["code, data or settings (the folder has no stamp)"]
    labels = {"code": "code version", "inputs": "input data", "settings": "settings"}
    return [label for key, label in labels.items() if old.get(key) != new.get(key)]


def check_run_folder(root: Path, stamp: dict[str, Any], *, resume: bool = False) -> None:
    """Refuse (without writing anything) a run folder made with other code, data or settings,
    unless ``resume``; see :func:`prepare_run_folder`."""
    check_out_folder(root)
    if not _contents(root) or resume:
        return
    differences = stamp_differences(read_stamp(root), stamp)
    if differences:
        what = " and ".join(
            [", ".join(differences[:-1]), differences[-1]] if len(differences) > 1 else differences
        )
        raise RunStateError(
            f"run folder {root} was made with a different {what}; "
            "rerun with --resume to keep what is still valid, --replace to empty it "
            "first, or use a new --out folder"
        )


def prepare_run_folder(
    root: Path, stamp: dict[str, Any], *, resume: bool = False, replace: bool = False
) -> str:
    """Make ``root`` ready for a run with ``stamp`` (call while holding :class:`RunLock`).

    * new or empty folder: stamped, ``"new"``;
    * same stamp: ``"resume"`` (stage markers decide what reruns);
    * a run folder with another stamp (other code, data or settings) or none: refused unless
      ``resume`` (restamped, ``"resume"``) or ``replace`` (emptied and stamped, ``"replace"``);
    * a non-empty folder that is not a run folder: always refused, never emptied.
    """
    if resume and replace:
        raise RunStateError("--resume and --replace contradict each other; choose one")
    check_out_folder(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    outcome = "new"
    if _contents(root):
        if replace:
            for p in _contents(root):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            outcome = "replace"
        else:
            check_run_folder(root, stamp, resume=resume)
            outcome = "resume"
    write_json_atomic(root / STAMP_FILE, stamp)
    return outcome


# --- the pseudonymisation key check value -------------------------------------------------

_KCV_CONSTANT = b"cohort-study key check value v1"


def key_check_value(secret: bytes) -> str:
    """HMAC-SHA256 of a fixed constant under the pseudonymisation secret: tells two secrets
    apart without revealing either (the secret itself is never stored)."""
    return hmac.new(secret, _KCV_CONSTANT, hashlib.sha256).hexdigest()


def check_key(root: Path, secret: bytes) -> None:
    """Refuse to resume a run whose person keys were made with another secret."""
    marker = read_marker(root, "link")
    recorded = marker.get("key_check_value") if marker else None
    if recorded and not hmac.compare_digest(recorded, key_check_value(secret)):
        raise RunStateError(
            f"this run's keys ({root}) were made with a different pseudonymisation secret; "
            "use the original secret or --replace / a new --out folder"
        )


def marker_path(run_dir: Path, stage: str) -> Path:
    return run_dir / ".stages" / f"{stage}.json"


def read_marker(run_dir: Path, stage: str) -> dict[str, Any] | None:
    p = marker_path(run_dir, stage)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON under a temporary name, then rename: never a half-written file (the
    temporary file is removed if writing fails, e.g. on a full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_marker(run_dir: Path, stage: str, data: dict[str, Any]) -> None:
    """Written last, atomically: a stage counts as done only once its marker exists."""
    write_json_atomic(marker_path(run_dir, stage), data)


def clear_markers_from(run_dir: Path, stage: str) -> None:
    for s in STAGES[STAGES.index(stage) :]:
        marker_path(run_dir, s).unlink(missing_ok=True)


# --- what each stage writes ---------------------------------------------------------------


@dataclass(frozen=True)
class StageOutputs:
    """The files (globs relative to RUN/) and DuckDB schemas (per database file) a stage
    writes; ``creates`` are database files the stage makes from nothing (removed whole when
    the stage's outputs are removed)."""

    files: tuple[str, ...] = ()
    schemas: tuple[tuple[str, tuple[str, ...]], ...] = ()
    creates: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()


LINKAGE_DB, ANALYSIS_DB = "linkage_zone.duckdb", "analysis_zone.duckdb"
STAGE_OUTPUTS: dict[str, StageOutputs] = {
    "validate": StageOutputs(
        files=("validation/*.json", "validation/*.md", "validation/*.yaml"),
        schemas=((LINKAGE_DB, ("staging", "quarantine", "validation")),),
        folders=("validation",),
    ),
    "link": StageOutputs(
        files=("linkage/*.json", "linkage/*.md", "linkage/*.yaml"),
        schemas=((LINKAGE_DB, ("linkage",)), (ANALYSIS_DB, ("analysis",))),
        creates=(ANALYSIS_DB,),
        folders=("linkage",),
    ),
    "build": StageOutputs(
        files=("cohort/*", "cohort/parquet/*"),
        schemas=((ANALYSIS_DB, ("cohort",)),),
        folders=("cohort",),
    ),
    "model": StageOutputs(
        files=("results/*", "results/figures/*", "release/*"), folders=("results", "release")
    ),
    "report": StageOutputs(files=("report.html", "codebook.md", "codebook.csv")),
}


def _schema_checks(db: Path, schemas: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """A cheap content check of each table in ``schemas``: its row count and a hash of its
    column names and types (``"missing"`` for an absent or unreadable database)."""
    import duckdb

    if not db.exists():
        yield f"{db.name}", "missing"
        return
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error:
        yield f"{db.name}", "unreadable"
        return
    try:
        rows = con.execute(
            "SELECT schema_name, table_name, list(column_name || ' ' || data_type "
            "ORDER BY column_index) FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name IN (SELECT unnest(?)) GROUP BY ALL ORDER BY ALL",
            [list(schemas)],
        ).fetchall()
        for schema, table, columns in rows:
            qualified = ".".join('"' + part.replace('"', '""') + '"' for part in (schema, table))
            (n,) = con.execute(f"SELECT count(*) FROM {qualified}").fetchone()  # type: ignore[misc]
            columns_hash = sha256_text(json.dumps(columns))[:16]
            yield f"{db.name}:{schema}.{table}", f"rows {n}; columns {columns_hash}"
    except duckdb.Error:
        yield f"{db.name}", "unreadable"
    finally:
        con.close()


def stage_output_hashes(run_dir: Path, stage: str) -> dict[str, str]:
    """What ``stage`` wrote now: SHA-256 of each file, a content check of each table."""
    spec = STAGE_OUTPUTS[stage]
    out: dict[str, str] = {}
    for pattern in spec.files:
        for p in sorted(run_dir.glob(pattern)):
            if p.is_file():
                out[str(p.relative_to(run_dir))] = sha256_file(p)
    for db, schemas in spec.schemas:
        out.update(_schema_checks(run_dir / db, schemas))
    return out


def _is_table_entry(name: str) -> bool:
    return ":" in name or name.endswith(".duckdb")


def outputs_intact(run_dir: Path, stage: str, recorded: dict[str, str] | None) -> bool:
    """True when every output recorded for ``stage`` still exists with the same hash (files
    by SHA-256, tables by the check of :func:`stage_output_hashes`)."""
    if not recorded:
        return False
    for name, digest in recorded.items():
        if _is_table_entry(name):
            continue
        p = run_dir / name
        if not p.is_file() or sha256_file(p) != digest:
            return False
    tables = {k: v for k, v in recorded.items() if _is_table_entry(k)}
    now: dict[str, str] = {}
    for db, schemas in STAGE_OUTPUTS[stage].schemas:
        now.update(_schema_checks(run_dir / db, schemas))
    return now == tables


def remove_stage_outputs(run_dir: Path, stage: str, *, tables: bool = True) -> None:
    """Delete what ``stage`` wrote: its folders and files, and (``tables``) its schemas, or the
    whole database file where the stage creates it."""
    import duckdb

    spec = STAGE_OUTPUTS[stage]
    for folder in spec.folders:
        shutil.rmtree(run_dir / folder, ignore_errors=True)
    for pattern in spec.files:
        for p in run_dir.glob(pattern):
            if p.is_file():
                p.unlink()
    if not tables:
        return
    for name in spec.creates:
        for p in (run_dir / name, run_dir / f"{name}.wal"):
            p.unlink(missing_ok=True)
    for db, schemas in spec.schemas:
        path = run_dir / db
        if db in spec.creates or not path.exists():
            continue
        con = duckdb.connect(str(path))
        try:
            for schema in schemas:
                con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            con.close()


def clear_from(run_dir: Path, stage: str) -> None:
    """Before ``stage`` reruns: the markers of it and every later stage, the files it wrote
    before, and everything later stages wrote (files and tables), so a rerun that stops
    part-way never leaves old downstream outputs beside new upstream ones."""
    clear_markers_from(run_dir, stage)
    later = STAGES[STAGES.index(stage) :]
    for s in reversed(later):
        remove_stage_outputs(run_dir, s, tables=s != stage)
