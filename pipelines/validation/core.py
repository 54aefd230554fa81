"""Ingest and validate one delivery: staging, quarantine, conservation, table rules."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipelines.db import DuckDBSettings, connect, quote_ident
from pipelines.errors import InputDataError
from pipelines.run_layout import RunLayout
from pipelines.validation.rules import checked_select_sql, q
from schemas.contracts import SOURCES, SourceContract

log = logging.getLogger(__name__)

Severity = Literal["error", "warn", "ignore"]


class TableCheck(BaseModel):
    """A table-level check: severity, tolerance and a note (as OHDSI's DQD does)."""

    model_config = ConfigDict(extra="forbid")
    severity: Severity = "error"
    tolerance: float = 0.0
    note: str = ""


class ValidationSettings(BaseModel):
    """Severity and tolerances of the table checks; saved into the run folder."""

    model_config = ConfigDict(extra="forbid")
    extra_columns: TableCheck = TableCheck(note="a column the contract does not declare")
    max_failing_share: TableCheck = TableCheck(
        tolerance=0.05, note="share of rows quarantined above which the delivery is refused"
    )
    min_rows: int = Field(1, ge=0, description="fewer data rows stop the run")
    identifier_completeness: TableCheck = TableCheck(
        severity="warn", tolerance=0.7, note="health-number completeness below this is reported"
    )
    gx_max_rows: int = Field(
        1_000_000, ge=1000, description="rows per source fed to Great Expectations (sampled)"
    )
    run_great_expectations: bool = True
    duckdb_memory_limit: str = Field("6GB", description="DuckDB memory limit for this stage")

    @classmethod
    def from_yaml(cls, path: str | Path) -> ValidationSettings:
        return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})


@dataclass
class SourceResult:
    source: str
    file: str
    rows_read: int
    rows_staged: int
    rows_quarantined: int
    physical_lines: int | None
    reasons: dict[str, int] = field(default_factory=dict)
    completeness: dict[str, float] = field(default_factory=dict)
    cleaning: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    expectations: list[dict[str, object]] = field(default_factory=list)

    @property
    def conserved(self) -> bool:
        return self.rows_read == self.rows_staged + self.rows_quarantined


@dataclass
class ValidationSummary:
    """Per-source counts; ``row_counts`` feeds the manifest."""

    sources: dict[str, SourceResult]

    @property
    def row_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s, r in self.sources.items():
            out[f"{s}.read"] = r.rows_read
            out[f"{s}.staged"] = r.rows_staged
            out[f"{s}.quarantined"] = r.rows_quarantined
        return out

    def to_markdown(self) -> str:
        lines = [
            "| source | rows read | staged | quarantined | conserved |",
            "|---|---:|---:|---:|---|",
        ]
        for s, r in self.sources.items():
            lines.append(
                f"| {s} | {r.rows_read:,} | {r.rows_staged:,} | {r.rows_quarantined:,} | "
                f"{'yes' if r.conserved else 'NO'} |"
            )
        return "\n".join(lines)


def find_delivery_file(data_dir: Path, contract: SourceContract) -> Path:
    found = [
        p
        for p in (data_dir / f"{contract.file_stem}.{ext}" for ext in ("csv", "parquet"))
        if p.exists()
    ]
    if not found:
        raise InputDataError(
            f"no extract for source `{contract.name}` in {data_dir}: expected "
            f"{contract.file_stem}.csv or {contract.file_stem}.parquet"
        )
    if len(found) > 1:
        raise InputDataError(
            f"two extracts for source `{contract.name}` in {data_dir} ({found[0].name} and "
            f"{found[1].name}); keep one"
        )
    return found[0]


def _check_text_file(path: Path, contract: SourceContract) -> tuple[list[str], int]:
    """Check encoding, delimiter and header of a CSV; return its header and physical lines."""
    size = path.stat().st_size
    if size == 0:
        raise InputDataError(f"{path.name} (source `{contract.name}`) is an empty file")
    lines = 0
    last_byte = b"\n"
    with path.open("rb") as fh:
        offset = 0
        tail = b""
        while chunk := fh.read(1 << 24):
            last_byte = chunk[-1:]
            block = tail + chunk
            try:
                block.decode("utf-8")
                tail = b""
            except UnicodeDecodeError as exc:
                if exc.start >= len(block) - 3 and exc.reason == "unexpected end of data":
                    tail = block[exc.start :]
                else:
                    bad_at = offset - len(tail) + exc.start
                    line_no = lines + block[: exc.start].count(b"\n") + 1
                    raise InputDataError(
                        f"{path.name} (source `{contract.name}`) is not UTF-8: invalid byte at "
                        f"offset {bad_at} (line {line_no}); re-export the file as UTF-8"
                    ) from None
            lines += chunk.count(b"\n")
            offset += len(chunk)
    with path.open(encoding="utf-8") as fh:
        header_line = fh.readline().rstrip("\r\n")
    if last_byte != b"\n":
        lines += 1
    if "," not in header_line:
        for delim in (";", "\t", "|"):
            if delim in header_line:
                raise InputDataError(
                    f"{path.name} (source `{contract.name}`) uses {delim!r} as delimiter; "
                    "extracts must be comma-separated"
                )
    header = [h.strip().strip('"') for h in header_line.split(",")]
    return header, lines - 1


def _check_columns(
    header: list[str], path: Path, contract: SourceContract, settings: ValidationSettings
) -> list[str]:
    warnings = []
    expected = contract.column_names
    missing = [c for c in expected if c not in header]
    extra = [c for c in header if c not in expected]
    if (
        missing
        and extra
        and len(set(extra) & set(_all_columns_except(contract))) >= len(header) // 2
    ):
        guess = _guess_source(header)
        if guess and guess != contract.name:
            raise InputDataError(
                f"{path.name} looks like an extract of source `{guess}`, not `{contract.name}`: "
                f"expectation expect_table_columns_to_match_set failed; check the file name"
            )
    if missing:
        raise InputDataError(
            f"{path.name} (source `{contract.name}`): column(s) {', '.join(f'`{c}`' for c in missing)} "
            f"missing (expectation expect_table_columns_to_match_set)"
            + (
                f"; unexpected column(s) {', '.join(f'`{c}`' for c in extra)} - renamed?"
                if extra
                else ""
            )
            + f"; expected: {', '.join(expected)}"
        )
    if extra:
        msg = (
            f"{path.name} (source `{contract.name}`): unexpected column(s) "
            f"{', '.join(f'`{c}`' for c in extra)} not in the contract"
        )
        if settings.extra_columns.severity == "error":
            raise InputDataError(msg + "; remove them or update the contract")
        if settings.extra_columns.severity == "warn":
            warnings.append(msg + " (not loaded)")
    return warnings


def _all_columns_except(contract: SourceContract) -> set[str]:
    return {c for s in SOURCES.values() if s.name != contract.name for c in s.column_names}


def _guess_source(header: list[str]) -> str | None:
    best, score = None, 0.0
    for s in SOURCES.values():
        overlap = len(set(header) & set(s.column_names)) / max(len(s.column_names), 1)
        if overlap > score:
            best, score = s.name, overlap
    return best if score >= 0.8 else None


def load_raw(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    contract: SourceContract,
    settings: ValidationSettings,
) -> tuple[int, int | None, list[str]]:
    """Load an extract as text into ``raw.<source>``, malformed lines into ``raw.<source>_rejects``.

    Returns (rows read, physical data lines or None for Parquet, warnings).
    """
    raw = f"raw.{contract.name}"
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute(f"DROP TABLE IF EXISTS {quote_ident(raw)}")
    con.execute(f"DROP TABLE IF EXISTS {quote_ident(raw + '_rejects')}")
    warnings: list[str] = []
    names = contract.column_names
    con.execute("DROP TABLE IF EXISTS rejects_rows")
    con.execute("DROP TABLE IF EXISTS rejects_scans")
    if path.suffix == ".parquet":
        header = [
            r[0]
            for r in con.execute(
                "SELECT name FROM parquet_schema(?) WHERE num_children IS NULL", [str(path)]
            ).fetchall()
        ]
        warnings += _check_columns(header, path, contract, settings)
        cols = ", ".join(f"CAST({q(c)} AS VARCHAR) AS {q(c)}" for c in names)
        con.execute(
            f"CREATE TABLE {quote_ident(raw)} AS SELECT row_number() OVER () AS _row_number, "
            f"? AS _delivery, {cols} FROM read_parquet(?)",
            [path.name, str(path)],
        )
        con.execute(
            f"CREATE TABLE {quote_ident(raw + '_rejects')} (line BIGINT, error_type VARCHAR, csv_line VARCHAR)"
        )
        physical = None
    else:
        header, physical = _check_text_file(path, contract)
        warnings += _check_columns(header, path, contract, settings)
        columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in header) + "}"
        con.execute(
            f"""CREATE TABLE {quote_ident(raw)} AS
            SELECT row_number() OVER () AS _row_number, ? AS _delivery, {", ".join(q(c) for c in names)}
            FROM read_csv(?, header=true, delim=',', quote='"', escape='"', auto_detect=false,
                          columns={columns}, store_rejects=true, strict_mode=true,
                          rejects_table='rejects_rows', rejects_scan='rejects_scans',
                          null_padding=false, parallel=false)""",
            [path.name, str(path)],
        )
        con.execute(
            f"CREATE TABLE {quote_ident(raw + '_rejects')} AS "
            "SELECT line::BIGINT AS line, error_type::VARCHAR AS error_type, csv_line FROM rejects_rows "
            "QUALIFY row_number() OVER (PARTITION BY line ORDER BY column_idx) = 1"
        )
        # data row numbers: rows are read in order, so the physical line is recoverable
    n_rows = con.execute(f"SELECT count(*) FROM {quote_ident(raw)}").fetchone()[0]  # type: ignore[index]
    n_rej = con.execute(f"SELECT count(*) FROM {quote_ident(raw + '_rejects')}").fetchone()[0]  # type: ignore[index]
    return int(n_rows) + int(n_rej), physical, warnings


def check_source(
    con: duckdb.DuckDBPyConnection,
    contract: SourceContract,
    path: Path,
    settings: ValidationSettings,
) -> SourceResult:
    """Type, check and split one loaded source into ``staging.<s>__building`` / quarantine."""
    rows_read, physical, warnings = load_raw(con, path, contract, settings)
    name = contract.name
    if rows_read < settings.min_rows:
        raise InputDataError(
            f"{path.name} (source `{name}`) has {rows_read} data rows (header only?); at least "
            f"{settings.min_rows} expected (expectation expect_table_row_count_to_be_between)"
        )
    checked = f"work.{name}_checked"
    con.execute("CREATE SCHEMA IF NOT EXISTS work")
    con.execute(f"DROP TABLE IF EXISTS {quote_ident(checked)}")
    con.execute(
        f"CREATE TABLE {quote_ident(checked)} AS "
        + checked_select_sql(contract, quote_ident(f"raw.{name}"))
    )
    # duplicates: exact duplicate rows, then duplicate primary keys. Hash every row first and
    # run the exact window comparison only on rows whose hash is shared (a few in a thousand),
    # instead of partitioning ten million wide rows.
    raw_cols = ", ".join(q("__raw_" + c) for c in contract.column_names)
    pk = ", ".join(q("__raw_" + c) for c in contract.primary_key)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE duplicate_flags AS
        WITH h AS (SELECT _row_number, hash({raw_cols}) AS row_h, hash({pk}) AS pk_h
                   FROM {quote_ident(checked)}),
             shared_row AS (SELECT row_h FROM h GROUP BY row_h HAVING count(*) > 1),
             shared_pk AS (SELECT pk_h FROM h GROUP BY pk_h HAVING count(*) > 1),
             candidates AS (
                SELECT _row_number FROM h
                WHERE row_h IN (SELECT row_h FROM shared_row)
                   OR pk_h IN (SELECT pk_h FROM shared_pk))
        SELECT * FROM (
            SELECT _row_number,
                   row_number() OVER (PARTITION BY {raw_cols} ORDER BY _row_number) > 1
                       AS duplicate_row,
                   row_number() OVER (PARTITION BY {pk} ORDER BY _row_number) > 1
                       AS duplicate_primary_key
            FROM {quote_ident(checked)}
            WHERE _row_number IN (SELECT _row_number FROM candidates))
        WHERE duplicate_row OR duplicate_primary_key"""
    )
    con.execute(
        f"""UPDATE {quote_ident(checked)} AS c SET _reasons = list_append(c._reasons,
                CASE WHEN d.duplicate_row THEN 'duplicate_row' ELSE 'duplicate_primary_key' END)
            FROM duplicate_flags AS d WHERE c._row_number = d._row_number"""
    )
    con.execute("DROP TABLE duplicate_flags")
    con.execute(f"DROP TABLE {quote_ident(f'raw.{name}')}")  # all of it is in `checked` now
    typed = ", ".join(q(c) for c in contract.column_names)
    raw_as = ", ".join(f"{q('__raw_' + c)} AS {q(c)}" for c in contract.column_names)
    con.execute("CREATE SCHEMA IF NOT EXISTS staging")
    con.execute("CREATE SCHEMA IF NOT EXISTS quarantine")
    con.execute(
        f"CREATE OR REPLACE TABLE {quote_ident(f'staging.{name}__building')} AS "
        f"SELECT {typed}, _delivery, _row_number FROM {quote_ident(checked)} "
        "WHERE len(_reasons) = 0"  # insertion order (_row_number) is preserved
    )
    nulls = ", ".join(f"NULL::VARCHAR AS {q(c)}" for c in contract.column_names[1:])
    con.execute(
        f"""CREATE OR REPLACE TABLE {quote_ident(f"quarantine.{name}__building")} AS
        SELECT {raw_as}, _delivery, _row_number, _reasons, NULL::VARCHAR AS _raw_line
        FROM {quote_ident(checked)} WHERE len(_reasons) > 0
        UNION ALL
        SELECT split_part(csv_line, ',', 1) AS {q(contract.column_names[0])}, {nulls},
               ? AS _delivery, NULL::BIGINT AS _row_number,
               ['malformed_line:' || lower(replace(error_type, ' ', '_'))]::VARCHAR[] AS _reasons,
               csv_line AS _raw_line
        FROM {quote_ident(f"raw.{name}_rejects")}
        ORDER BY _row_number NULLS LAST, {q(contract.column_names[0])}""",
        [path.name],
    )
    staged = _count(con, f"staging.{name}__building")
    quarantined = _count(con, f"quarantine.{name}__building")
    reasons = dict(
        con.execute(
            f"SELECT r, count(*) FROM (SELECT unnest(_reasons) AS r FROM "
            f"{quote_ident(f'quarantine.{name}__building')}) GROUP BY r ORDER BY r"
        ).fetchall()
    )
    result = SourceResult(name, path.name, rows_read, staged, quarantined, physical, reasons)
    result.warnings += warnings
    if physical is not None and physical != rows_read:
        result.warnings.append(
            f"{physical - rows_read} physical line(s) were part of multi-line malformed records"
        )
    result.cleaning = _cleaning_counts(con, contract, checked)
    result.completeness = _completeness(con, contract, f"staging.{name}__building", staged)
    share = quarantined / rows_read if rows_read else 0.0
    failing = settings.max_failing_share
    if share > failing.tolerance and failing.severity != "ignore":
        msg = (
            f"{path.name} (source `{name}`): {share:.1%} of rows fail row rules, above the "
            f"tolerance {failing.tolerance:.1%}; commonest reasons: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        )
        if failing.severity == "error":
            raise InputDataError(msg)
        result.warnings.append(msg)
    completeness = settings.identifier_completeness
    if "nhs_number" in result.completeness and completeness.severity != "ignore":
        level = completeness.tolerance
        if result.completeness["nhs_number"] < level:
            msg = (
                f"{path.name} (source `{name}`): health-number completeness "
                f"{result.completeness['nhs_number']:.1%} below {level:.0%}"
            )
            if completeness.severity == "error":
                raise InputDataError(msg + "; linkage would miss many records")
            result.warnings.append(msg)
    if not result.conserved:
        raise InputDataError(f"internal conservation check failed for `{name}`")
    return result


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0])  # type: ignore[index]


def _cleaning_counts(
    con: duckdb.DuckDBPyConnection, contract: SourceContract, checked: str
) -> dict[str, int]:
    parts = []
    for c in contract.columns:
        raw = q("__raw_" + c.name)
        if c.dtype == "date":
            parts.append(
                f"count(*) FILTER (WHERE {raw} = '1900-01-01') AS {q('placeholder_to_null:' + c.name)}"
            )
            parts.append(
                f"count(*) FILTER (WHERE {raw} IS NOT NULL AND NOT regexp_full_match({raw}, '\\d{{4}}-\\d{{2}}-\\d{{2}}') "
                f"AND {q(c.name)} IS NOT NULL) AS {q('date_format_normalised:' + c.name)}"
            )
        elif c.dtype == "string":
            parts.append(
                f"count(*) FILTER (WHERE {raw} IS NOT NULL AND {raw} <> TRIM({raw})) "
                f"AS {q('whitespace_trimmed:' + c.name)}"
            )
    parts.append(
        "count(*) FILTER (WHERE list_contains(_reasons, 'duplicate_row')) AS duplicate_rows_collapsed"
    )
    row = con.execute(f"SELECT {', '.join(parts)} FROM {quote_ident(checked)}")
    names = [d[0] for d in row.description]
    values = row.fetchone() or ()
    return {k: int(v) for k, v in zip(names, values, strict=True) if v}


def _completeness(
    con: duckdb.DuckDBPyConnection, contract: SourceContract, table: str, n: int
) -> dict[str, float]:
    ids = [c.name for c in contract.columns if c.linkage_role]
    if not ids or n == 0:
        return {}
    sel = ", ".join(f"count({q(c)}) AS {q(c)}" for c in ids)
    row = con.execute(f"SELECT {sel} FROM {quote_ident(table)}").fetchone() or ()
    return {c: round(int(v) / n, 4) for c, v in zip(ids, row, strict=True)}


def publish(con: duckdb.DuckDBPyConnection, sources: list[str]) -> None:
    """Swap every ``__building`` table into place in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        for s in sources:
            for schema in ("staging", "quarantine"):
                con.execute(f"DROP TABLE IF EXISTS {quote_ident(f'{schema}.{s}')}")
                con.execute(
                    f"ALTER TABLE {quote_ident(f'{schema}.{s}__building')} RENAME TO {q(s)}"
                )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def _drop_building(con: duckdb.DuckDBPyConnection) -> None:
    for schema in ("staging", "quarantine"):
        for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? "
            "AND table_name LIKE '%\\_\\_building' ESCAPE '\\'",
            [schema],
        ).fetchall():
            con.execute(f"DROP TABLE {quote_ident(f'{schema}.{t}')}")


def validate_delivery(
    *,
    data_dir: str | Path,
    layout: RunLayout,
    settings: ValidationSettings | None = None,
    progress: object = None,
) -> ValidationSummary:
    """Validate every extract of a delivery into the linkage zone.

    Either every source is staged (all-or-nothing swap) or the run stops with an
    :class:`InputDataError` and earlier staging tables are left untouched.
    """
    settings = settings or ValidationSettings()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputDataError(f"delivery folder {data_dir} does not exist")
    layout.ensure()
    (layout.validation_dir / "validation_settings.yaml").write_text(
        yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    db = DuckDBSettings(
        memory_limit=settings.duckdb_memory_limit,
        temp_directory=str(layout.tmp_dir / "duckdb"),
    )
    con = connect(layout.linkage_db, settings=db)
    results: dict[str, SourceResult] = {}
    try:
        _drop_building(con)
        for contract in SOURCES.values():
            path = find_delivery_file(data_dir, contract)
            log.info("validating %s (%s)", contract.name, path.name)
            if callable(progress):
                progress(f"validating {contract.name}")
            results[contract.name] = check_source(con, contract, path, settings)
        if settings.run_great_expectations:
            from pipelines.validation.gx_suites import run_suites

            if callable(progress):
                progress("running Great Expectations suites")
            run_suites(con, results, layout, settings)
        publish(con, list(results))
        con.execute("CREATE SCHEMA IF NOT EXISTS validation")
        con.execute(
            "CREATE OR REPLACE TABLE validation.summary (source VARCHAR, rows_read BIGINT, "
            "rows_staged BIGINT, rows_quarantined BIGINT, conserved BOOLEAN)"
        )
        con.executemany(
            "INSERT INTO validation.summary VALUES (?, ?, ?, ?, ?)",
            [
                [r.source, r.rows_read, r.rows_staged, r.rows_quarantined, r.conserved]
                for r in results.values()
            ],
        )
        con.execute("DROP SCHEMA IF EXISTS raw CASCADE")
        con.execute("DROP SCHEMA IF EXISTS work CASCADE")
    except BaseException:
        _drop_building(con)
        raise
    finally:
        con.close()
    summary = ValidationSummary(results)
    write_report(summary, layout)
    return summary


def write_report(summary: ValidationSummary, layout: RunLayout) -> None:
    """The data-quality report: aggregates only, never a row of data."""
    data = {
        s: {
            "file": r.file,
            "rows_read": r.rows_read,
            "rows_staged": r.rows_staged,
            "rows_quarantined": r.rows_quarantined,
            "conserved": r.conserved,
            "physical_lines": r.physical_lines,
            "quarantine_reasons": r.reasons,
            "identifier_completeness": r.completeness,
            "cleaning": r.cleaning,
            "warnings": r.warnings,
            "expectations": r.expectations,
        }
        for s, r in summary.sources.items()
    }
    (layout.validation_dir / "dq_report.json").write_text(
        json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    lines = ["# Data-quality report", "", summary.to_markdown(), ""]
    for s, r in summary.sources.items():
        lines += [f"## {s} ({r.file})", ""]
        if r.reasons:
            lines += ["| quarantine reason | rows |", "|---|---:|"]
            lines += [f"| {k} | {v:,} |" for k, v in r.reasons.items()] + [""]
        if r.completeness:
            lines.append(
                "Identifier completeness: "
                + ", ".join(f"{k} {v:.1%}" for k, v in r.completeness.items())
            )
        if r.cleaning:
            lines.append("Cleaning: " + ", ".join(f"{k} {v:,}" for k, v in r.cleaning.items()))
        if r.expectations:
            failed = [e for e in r.expectations if not e["success"]]
            lines.append(
                f"Great Expectations: {len(r.expectations) - len(failed)} of {len(r.expectations)} "
                "expectations met"
                + (
                    ": unmet "
                    + ", ".join(f"{e['expectation']}({e.get('column', '')})" for e in failed)
                    if failed
                    else ""
                )
            )
        lines += [f"- warning: {w}" for w in r.warnings] + [""]
    (layout.validation_dir / "dq_report.md").write_text("\n".join(lines), encoding="utf-8")
