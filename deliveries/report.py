"""After validation of an adapted delivery: trace quarantined rows back to their source lines and
report the DfE's SSDA903 rule failures beside validation's own checks.

Reads ``DATA/adapted/`` (written by :func:`deliveries.adapt_delivery`) and the linkage zone's
``quarantine.<source>`` tables; writes

* ``validation.quarantine_source_lines`` (linkage zone) and
  ``RUN/validation/quarantine_source_lines.csv``: each quarantined row of an adapted source with
  its record id, reasons, source file and line;
* ``validation.dfe_ssda903_failures`` (linkage zone) and ``RUN/validation/dfe_ssda903_rules.csv``
  (failures per rule);
* a section appended to ``RUN/validation/dq_report.md``.

No value of a row is read or written here: record ids, reasons, file names and line numbers
only. File paths reach SQL only as parameters; table names come from the contracts.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from deliveries.adapt import ADAPTED_DIR, DFE_FAILURES_FILE, SECTION47_FAILURES_FILE
from deliveries.dfe_cin_rules import RULES as SECTION47_RULES
from deliveries.dfe_rules import RULES
from ground.db import connect, quote_ident
from ground.run_layout import RunLayout
from schemas.contracts import SOURCES

log = logging.getLogger(__name__)


@dataclass
class AdaptedChecks:
    """What was reported: quarantined rows traced per source, DfE rule failures per rule."""

    traced: dict[str, int] = field(default_factory=dict)
    dfe_failures: dict[str, int] = field(default_factory=dict)
    section47_failures: dict[str, int] = field(default_factory=dict)


def report_adapted_checks(*, data_dir: str | Path, layout: RunLayout) -> AdaptedChecks | None:
    """Report on an adapted delivery (None: the delivery was not adapted)."""
    adapted = Path(data_dir) / ADAPTED_DIR
    if not adapted.is_dir():
        return None
    result = AdaptedChecks()
    sources = [s for s in SOURCES if (adapted / f"source_lines_{s}.csv").is_file()]
    con = connect(layout.linkage_db)
    try:
        con.execute("CREATE SCHEMA IF NOT EXISTS validation")
        con.execute(
            "CREATE OR REPLACE TABLE validation.quarantine_source_lines (source VARCHAR, "
            "record_id VARCHAR, reasons VARCHAR[], source_file VARCHAR, source_line BIGINT)"
        )
        for source in sources:
            lines = str(adapted / f"source_lines_{source}.csv")
            quarantine = quote_ident(f"quarantine.{source}")
            read = "read_csv(?, header=true, all_varchar=true)"
            # a staged-then-quarantined row by its row number among the well-formed lines; a
            # malformed line (no row number) by its record id
            con.execute(
                f"""INSERT INTO validation.quarantine_source_lines
                SELECT ?, q.record_id, q._reasons, s.source_file, s.source_line::BIGINT
                FROM {quarantine} q JOIN {read} s ON s.row_number = q._row_number::VARCHAR
                UNION ALL
                SELECT ?, q.record_id, q._reasons, s.source_file, s.source_line::BIGINT
                FROM {quarantine} q JOIN {read} s
                  ON q._row_number IS NULL AND s.row_number IS NULL AND s.record_id = q.record_id
                """,
                [source, lines, source, lines],
            )
            (n,) = con.execute(
                "SELECT count(*) FROM validation.quarantine_source_lines WHERE source = ?",
                [source],
            ).fetchone() or (0,)
            result.traced[source] = int(n)
        con.execute(
            "COPY (SELECT source, record_id, array_to_string(reasons, ';') AS reasons, "
            "source_file, source_line FROM validation.quarantine_source_lines "
            "ORDER BY source, source_file, source_line) TO ? (HEADER, DELIMITER ',')",
            [str(layout.validation_dir / "quarantine_source_lines.csv")],
        )
        dfe = adapted / DFE_FAILURES_FILE
        if dfe.is_file():
            con.execute(
                "CREATE OR REPLACE TABLE validation.dfe_ssda903_failures AS "
                "SELECT * FROM read_csv(?, header=true, all_varchar=true)",
                [str(dfe)],
            )
            for code, n in con.execute(
                "SELECT rule, count(*) FROM validation.dfe_ssda903_failures GROUP BY rule"
            ).fetchall():
                result.dfe_failures[str(code)] = int(n)
        section47 = adapted / SECTION47_FAILURES_FILE
        if section47.is_file():
            con.execute(
                "CREATE OR REPLACE TABLE validation.dfe_cin_section47_failures AS "
                "SELECT * FROM read_csv(?, header=true, all_varchar=true)",
                [str(section47)],
            )
            for code, n in con.execute(
                "SELECT rule, count(*) FROM validation.dfe_cin_section47_failures GROUP BY rule"
            ).fetchall():
                result.section47_failures[str(code)] = int(n)
    finally:
        con.close()
    _write_reports(
        result,
        layout,
        dfe_checked=(adapted / DFE_FAILURES_FILE).is_file(),
        section47_checked=(adapted / SECTION47_FAILURES_FILE).is_file(),
    )
    return result


def _write_reports(
    result: AdaptedChecks, layout: RunLayout, *, dfe_checked: bool, section47_checked: bool
) -> None:
    lines = ["", "## Adapted delivery: quarantined rows traced to their source lines", ""]
    lines += ["| source | quarantined rows traced |", "|---|---:|"]
    lines += [f"| {s} | {n:,} |" for s, n in result.traced.items()]
    lines += ["", "Each row: RUN/validation/quarantine_source_lines.csv.", ""]
    if dfe_checked:
        with (layout.validation_dir / "dfe_ssda903_rules.csv").open(
            "w", newline="", encoding="utf-8"
        ) as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["rule", "table", "message", "failures"])
            for rule in RULES:
                w.writerow(
                    [rule.code, rule.table, rule.message, result.dfe_failures.get(rule.code, 0)]
                )
        lines += [
            "## DfE SSDA903 validation rules (reported, not quarantined)",
            "",
            "| rule | table | message | lines failing |",
            "|---|---|---|---:|",
        ]
        lines += [
            f"| {r.code} | {r.table} | {r.message} | {result.dfe_failures.get(r.code, 0):,} |"
            for r in RULES
        ]
        lines += ["", "Each failing line: validation.dfe_ssda903_failures (linkage zone).", ""]
    if section47_checked:
        lines += [
            "## DfE children in need census rules on Section 47 enquiries (reported; no contract "
            "column takes an enquiry)",
            "",
            "| rule | message | lines failing |",
            "|---|---|---:|",
        ]
        lines += [
            f"| {r.code} | {r.message} | {result.section47_failures.get(r.code, 0):,} |"
            for r in SECTION47_RULES
        ]
        lines += [
            "",
            "Each failing line: validation.dfe_cin_section47_failures (linkage zone).",
            "",
        ]
    report = layout.validation_dir / "dq_report.md"
    with report.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
