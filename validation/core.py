"""Ingest and validate one delivery: staging, quarantine, conservation, table rules."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import yaml

from ground.db import (
    DuckDBSettings,
    clear_linkage_scratch,
    connect,
    linkage_scratch_dir,
    private_dir,
    quote_ident,
)
from ground.errors import InputDataError
from ground.run_layout import RunLayout
from schemas.contracts import PRELINKED_MODE, PRELINKED_SOURCES, SOURCES, SourceContract
from validation.delivery_files import (
    CsvRecords,
    count_blank_lines,
    count_csv_records,
    linkage_mode,
    read_header,
    refuse_duplicate_columns,
    refuse_identifier_columns,
    scan_delivery,
    shown_names,
    transcode_to_utf8,
)
from validation.rules import checked_select_sql, lit, q
from validation.settings import SourceResult, ValidationSettings

log = logging.getLogger(__name__)


@dataclass
class ValidationSummary:
    """Per-source counts; ``row_counts`` feeds the manifest."""

    sources: dict[str, SourceResult]
    delivery_warnings: list[str] = field(default_factory=list)
    latest_plausible_date: date | None = None

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
            "| source | records in file | rows read | staged | quarantined | conserved |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for s, r in self.sources.items():
            lines.append(
                f"| {s} | {r.file_records:,} | {r.rows_read:,} | {r.rows_staged:,} | "
                f"{r.rows_quarantined:,} | {'yes' if r.conserved else 'NO'} |"
            )
        lines += [f"\nwarning: {w}" for w in self.delivery_warnings]
        return "\n".join(lines)


@dataclass(frozen=True)
class Extract:
    """One delivered extract whose file, header and columns have been checked (not yet read)."""

    contract: SourceContract
    path: Path
    header: list[str]
    file_records: int  # records the file holds, counted without the reader (CSV bytes, footer)
    csv: CsvRecords | None  # a CSV's counts (None for Parquet)
    encoding: str = "utf-8"  # of a CSV; anything else is transcoded to a UTF-8 copy first

    @property
    def where(self) -> str:
        return f"{self.path.name} (source `{self.contract.name}`)"


def prepare_extract(
    contract: SourceContract, path: Path, settings: ValidationSettings
) -> tuple[Extract, list[str]]:
    """Check an extract's header against its contract and count its records, without the
    reader: a CSV's bytes (one numpy pass) or a Parquet file's footer."""
    if path.suffix == ".parquet":
        where = f"{path.name} (source `{contract.name}`)"
        parquet = _parquet_file(path, where)
        header = list(parquet.schema_arrow.names)
        refuse_duplicate_columns(header, where, contract)
        warnings = _check_columns(header, path, contract, settings)
        return Extract(contract, path, header, parquet.metadata.num_rows, None), warnings
    encoding = settings.encodings.get(contract.name, "utf-8")
    header = read_header(path, contract, encoding)
    warnings = _check_columns(header, path, contract, settings)
    records = count_csv_records(path, contract, utf8=encoding == "utf-8")
    return Extract(contract, path, header, records.records, records, encoding), warnings


def _parquet_file(path: Path, where: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        raise InputDataError(
            f"{where} is not a readable Parquet file; re-export it (or deliver CSV)"
        ) from None


def _check_columns(
    header: list[str], path: Path, contract: SourceContract, settings: ValidationSettings
) -> list[str]:
    """Missing, extra and foreign columns. Header cells reach messages only through
    ``shown_names`` (cut and cleaned), and not at all when no contract column matched: the
    first line may then be a data row (a file exported without its header)."""
    warnings = []
    where = f"{path.name} (source `{contract.name}`)"
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
    if len(missing) == len(expected):
        raise InputDataError(
            f"{where}: none of the contract's columns is in the first line ({len(header)} "
            "cell(s), not shown: it may be a data row); is the header missing? expected: "
            + ", ".join(expected)
        )
    if missing:
        raise InputDataError(
            f"{where}: column(s) {', '.join(f'`{c}`' for c in missing)} "
            f"missing (expectation expect_table_columns_to_match_set)"
            + (f"; unexpected column(s) {shown_names(extra)} - renamed?" if extra else "")
            + f"; expected: {', '.join(expected)}"
        )
    if extra:
        msg = f"{where}: unexpected column(s) {shown_names(extra)} not in the contract"
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


def _reader_failed(extract: Extract, exc: duckdb.Error) -> InputDataError:
    """The reader's own message quotes the offending line (identifiers): keep only its number."""
    line = re.search(r"on line:? (\d+)", str(exc), flags=re.IGNORECASE)
    return InputDataError(
        f"{extract.where}: the reader failed"
        + (f" at line {line.group(1)}" if line else "")
        + f" ({type(exc).__name__}); check the file's quoting and line ends (one kind, LF or "
        "CRLF, for every line), or re-export it"
    )


def load_raw(con: duckdb.DuckDBPyConnection, extract: Extract, read_path: Path) -> tuple[int, int]:
    """Load an extract as text into ``raw.<source>``, malformed lines into ``raw.<source>_rejects``.

    ``read_path``: the file to read (the delivered one, or its UTF-8 copy). The CSV is read
    under column names made here (``c0``, ``c1``, ...): no header text reaches SQL. Then what
    was read (rows + malformed lines) must equal what the file holds (records counted from its
    bytes, or the row count in the Parquet footer); anything else is an error.

    Returns the rows read (rows returned plus malformed lines rejected) and the blank lines the
    reader skipped (counted from the bytes, only when the reader returned fewer records)."""
    contract = extract.contract
    raw = f"raw.{contract.name}"
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute(f"DROP TABLE IF EXISTS {quote_ident(raw)}")
    con.execute(f"DROP TABLE IF EXISTS {quote_ident(raw + '_rejects')}")
    con.execute("DROP TABLE IF EXISTS rejects_rows")
    con.execute("DROP TABLE IF EXISTS rejects_scans")
    names = contract.column_names
    if extract.path.suffix == ".parquet":
        cols = ", ".join(f"CAST({q(c)} AS VARCHAR) AS {q(c)}" for c in names)
        try:
            con.execute(
                f"CREATE TABLE {quote_ident(raw)} AS SELECT row_number() OVER () AS _row_number, "
                f"? AS _delivery, {cols} FROM read_parquet(?)",
                [extract.path.name, str(read_path)],
            )
        except duckdb.Error as exc:
            raise _reader_failed(extract, exc) from None
        con.execute(
            f"CREATE TABLE {quote_ident(raw + '_rejects')} (line BIGINT, error_type VARCHAR, csv_line VARCHAR)"
        )
    else:
        position = {h: i for i, h in enumerate(extract.header)}
        # generated names only: header text is never part of the SQL
        columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(extract.header))) + "}"
        select = ", ".join(f"c{position[c]} AS {q(c)}" for c in names)
        try:
            con.execute(
                f"""CREATE TABLE {quote_ident(raw)} AS
                SELECT row_number() OVER () AS _row_number, ? AS _delivery, {select}
                FROM read_csv(?, header=true, delim=',', quote='"', escape='"', auto_detect=false,
                              columns={columns}, store_rejects=true, strict_mode=true,
                              rejects_table='rejects_rows', rejects_scan='rejects_scans',
                              null_padding=false, parallel=false)""",
                [extract.path.name, str(read_path)],
            )
        except duckdb.Error as exc:
            raise _reader_failed(extract, exc) from None
        con.execute(
            f"CREATE TABLE {quote_ident(raw + '_rejects')} AS "
            "SELECT line::BIGINT AS line, error_type::VARCHAR AS error_type, csv_line FROM rejects_rows "
            "QUALIFY row_number() OVER (PARTITION BY line ORDER BY column_idx) = 1"
        )
    n_rows = _count(con, raw)
    n_rej = _count(con, raw + "_rejects")
    blank = 0
    if extract.csv is not None and n_rows + n_rej < extract.file_records:
        blank = count_blank_lines(read_path)
    if n_rows + n_rej + blank != extract.file_records:
        raise InputDataError(
            f"{extract.where}: reading went wrong: the file holds {extract.file_records:,} "
            "data records "
            f"but the reader returned {n_rows:,} rows and {n_rej:,} malformed lines; nothing was "
            "staged; check the file's quoting and line ends, or re-export it"
        )
    return n_rows + n_rej, blank


def check_source(
    con: duckdb.DuckDBPyConnection,
    extract: Extract,
    settings: ValidationSettings,
    *,
    scratch_dir: Path,
    latest_date: date,
) -> SourceResult:
    """Type, check and split one loaded source into ``staging.<s>__building`` / quarantine.

    ``scratch_dir``: where a legacy-encoded CSV's UTF-8 copy is written (and deleted after
    loading); ``latest_date``: dates after it are ``future_date``."""
    contract, path = extract.contract, extract.path
    read_path = path
    try:
        if extract.encoding != "utf-8":
            read_path = scratch_dir / f"{contract.name}.utf8.csv"
            transcode_to_utf8(path, contract, extract.encoding, read_path)
        rows_read, blank_lines = load_raw(con, extract, read_path)
    finally:
        if read_path != path:
            read_path.unlink(missing_ok=True)
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
        + checked_select_sql(
            contract,
            quote_ident(f"raw.{name}"),
            latest_date=latest_date,
            # a CSV whose bytes hold no NUL needs no NUL check per cell
            nul_bytes=extract.csv is None or extract.csv.nul_bytes,
        )
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
    result = SourceResult(
        name,
        path.name,
        rows_read,
        staged,
        quarantined,
        extract.csv.records if extract.csv else None,
        extract.file_records - blank_lines,
        reasons,
    )
    if blank_lines:
        result.warnings.append(f"{blank_lines} blank line(s) in the file skipped")
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
        raise InputDataError(
            f"{path.name} (source `{name}`): conservation failed: {result.file_records:,} "
            f"records in the file, {rows_read:,} read, {staged:,} staged, {quarantined:,} "
            "quarantined; nothing was staged (an internal error: please report it)"
        )
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
                f"count(*) FILTER (WHERE list_contains(_reasons, {lit(c.name + ':placeholder_date')})) "
                f"AS {q('placeholder_to_null:' + c.name)}"
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
    # checks that need no rows run first, for every source, before anything is written
    delivery = scan_delivery(data_dir)
    prelinked = linkage_mode(data_dir) == PRELINKED_MODE  # docs/deliveries.md, pre-linked
    contracts = PRELINKED_SOURCES if prelinked else SOURCES
    if prelinked:
        for contract in contracts.values():
            path = delivery.files[contract.name]
            refuse_identifier_columns(
                _parquet_file(path, path.name).schema_arrow.names
                if path.suffix == ".parquet"
                else read_header(path, contract, settings.encodings.get(contract.name, "utf-8")),
                f"{path.name} (source `{contract.name}`)",
            )
    prepared = [
        prepare_extract(contract, delivery.files[contract.name], settings)
        for contract in contracts.values()
    ]
    latest_date = settings.latest_plausible_date or date.today()
    settings = settings.model_copy(update={"latest_plausible_date": latest_date})
    layout.ensure()
    # UTF-8 copies of legacy-encoded extracts and DuckDB's spill files hold identifiers: they
    # live in the linkage zone's owner-only scratch folder, emptied first (a killed run's
    # leftovers) and removed when validation ends, also on failure
    clear_linkage_scratch(layout.root)
    scratch = private_dir(linkage_scratch_dir(layout.root) / "validation")
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
        for extract, column_warnings in prepared:
            name = extract.contract.name
            log.info("validating %s (%s)", name, extract.path.name)
            if callable(progress):
                progress(f"validating {name}")
            results[name] = check_source(
                con,
                extract,
                settings,
                scratch_dir=scratch,
                latest_date=latest_date,
            )
            results[name].warnings[:0] = column_warnings
        if settings.run_great_expectations:
            from validation.gx_suites import run_suites

            if callable(progress):
                progress("running Great Expectations suites")
            run_suites(con, results, layout, settings, contracts)
        publish(con, list(results))
        con.execute("CREATE SCHEMA IF NOT EXISTS validation")
        con.execute(
            "CREATE OR REPLACE TABLE validation.summary (source VARCHAR, rows_read BIGINT, "
            "rows_staged BIGINT, rows_quarantined BIGINT, conserved BOOLEAN, "
            "file_records BIGINT)"
        )
        con.executemany(
            "INSERT INTO validation.summary VALUES (?, ?, ?, ?, ?, ?)",
            [
                [
                    r.source,
                    r.rows_read,
                    r.rows_staged,
                    r.rows_quarantined,
                    r.conserved,
                    r.file_records,
                ]
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
        clear_linkage_scratch(layout.root)
    summary = ValidationSummary(results, delivery.warnings, latest_date)
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
            "file_records": r.file_records,
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
    if summary.latest_plausible_date:
        lines += [
            f"Dates after {summary.latest_plausible_date.isoformat()} were quarantined as "
            "`future_date`.",
            "",
        ]
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
