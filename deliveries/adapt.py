"""Adapt a delivery in statutory-return layouts into the contracts' extract files.

:func:`adapt_delivery` reads the layouts' tables (a delivery may hold several layouts, e.g. the
903 for social care and HES for health, each making different contracts), joins and recodes
them, and writes into a new folder: one CSV per contract the layouts make, the delivery's other
(native) extracts copied as they are, ``delivery.json`` naming the layouts (``"layouts"``), and
``adapted/source_lines_<source>.csv``, which points each written row back to its source file and line (no identifier in it: the row's position in
the written extract, its record id, the source file's name and the line). Everything is written
into a temporary folder beside the output and renamed at the end, so a failed adaptation leaves
nothing behind. No SQL is used: the delivered text never reaches a query.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from deliveries.mapping import (
    ColumnRule,
    Layout,
    MappingError,
    OutputMapping,
    SourceLayoutError,
    SourceTable,
    load_layout,
    load_layouts,
    shipped_layouts,
)
from deliveries.readers import SourceRow, Value, read_table
from ground.errors import InputDataError
from schemas.contracts import SOURCES

log = logging.getLogger(__name__)

UNDOTTED_ICD10 = re.compile(r"[A-Z][0-9]{2}[0-9A-Z]{1,2}")
ADAPTED_DIR = "adapted"  # what the adapter adds to the delivery besides the extracts
JOINED = "__joined__"  # a rule's table, once resolved: the joined table's row
# a declared date format is wrong (not a few bad rows) when more than this share of the values
# it is given do not parse
DATE_FORMAT_FAILURE_SHARE = 0.5
DATE_FORMAT_MIN_VALUES = 20


@dataclass
class AdaptSummary:
    """What was written: rows per contract made, where they came from, what was copied."""

    layout: str
    out_dir: Path
    rows: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)
    source_files: dict[str, list[str]] = field(default_factory=dict)
    copied: list[str] = field(default_factory=list)
    uncovered: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dfe_failures: dict[str, int] = field(default_factory=dict)  # DfE rule code -> lines
    section47_enquiries: int | None = None  # Section 47 enquiries read (None: not checked)
    section47_failures: dict[str, int] = field(default_factory=dict)  # DfE CIN rule -> lines

    def to_markdown(self) -> str:
        lines = [
            f"Delivery adapted from layout(s) `{self.layout}` into {self.out_dir}",
            "",
            "| contract | rows written | malformed (quarantined by validation) | from |",
            "|---|---:|---:|---|",
        ]
        lines += [
            f"| {s} | {n:,} | {self.malformed.get(s, 0):,} | "
            f"{len(self.source_files.get(s, []))} file(s) |"
            for s, n in self.rows.items()
        ]
        if self.copied:
            lines += ["", "Copied as delivered (native contract files): " + ", ".join(self.copied)]
        for s, cols in self.uncovered.items():
            if cols:
                lines += [f"{s}: contract column(s) the layout leaves empty: {', '.join(cols)}"]
        if self.dfe_failures:
            lines += [
                "DfE SSDA903 rules failed (lines; details in adapted/"
                f"{DFE_FAILURES_FILE}): "
                + ", ".join(f"{code} {n:,}" for code, n in sorted(self.dfe_failures.items()))
            ]
        if self.section47_enquiries is not None:
            lines += [
                f"Section 47 enquiries read (checked, not mapped: no contract column takes "
                f"them): {self.section47_enquiries:,}; DfE CIN rules failed (lines; details in "
                f"adapted/{SECTION47_FAILURES_FILE}): "
                + (
                    ", ".join(
                        f"{code} {n:,}" for code, n in sorted(self.section47_failures.items())
                    )
                    or "none"
                )
            ]
        lines += self.warnings
        return "\n".join(lines)


def detect_layouts(folder: Path) -> list[str]:
    """The shipped layouts whose tables' files are all in ``folder``, in name order (empty:
    the native layout)."""
    return [
        name
        for name in shipped_layouts()
        if all(any(folder.glob(t.files)) for t in load_layout(name).tables.values())
    ]


def detect_layout(folder: Path) -> str | None:
    """The layouts detected in ``folder`` as one ``--layout`` value (``ssda903,hes_apc``), or
    None for the native layout."""
    return ",".join(detect_layouts(folder)) or None


def declared_layouts(folder: Path) -> list[str]:
    """The layouts ``folder/delivery.json`` declares: ``"layouts": [...]``, or the single
    ``"layout"`` an older delivery.json names (empty: none declared)."""
    path = folder / "delivery.json"
    if not path.is_file():
        return []
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        declared = meta.get("layouts", meta.get("layout", []))
    except (ValueError, AttributeError):
        raise InputDataError(f"{path} is not a JSON object; correct or remove it") from None
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputDataError(f'{path}: "layouts" must be a list of layout names')
    return names


def refuse_unadapted(folder: Path) -> None:
    """Stop early, with what to do, when a folder given to validation holds statutory-return
    layouts instead of the contract extracts they make."""
    for name in detect_layouts(folder):
        layout = load_layout(name)
        missing = [
            s
            for s in layout.outputs
            if not any(
                (folder / f"{SOURCES[s].file_stem}.{ext}").is_file() for ext in ("csv", "parquet")
            )
        ]
        if missing:
            files = ", ".join(t.files for t in layout.tables.values())
            raise InputDataError(
                f"{folder} holds a delivery in the {name} layout ({files}), not the contract "
                f"extracts of {', '.join(missing)}: run `cohort adapt --source {folder} --out "
                "NEW_FOLDER` first and give NEW_FOLDER to --data"
            )


def _table_files(source_dir: Path, table: SourceTable, layout: Layout) -> list[Path]:
    files = sorted(p for p in source_dir.glob(table.files) if p.is_file())
    if not files:
        raise SourceLayoutError(
            f"no file matching {table.files} in {source_dir} (table {table.name} of layout "
            f"{layout.name}); deliver it or choose another layout"
        )
    return files


def _native_file(source_dir: Path, source: str, names: str) -> Path:
    stem = SOURCES[source].file_stem
    found = [source_dir / f"{stem}.{ext}" for ext in ("csv", "parquet")]
    found = [p for p in found if p.is_file()]
    if len(found) != 1:
        raise SourceLayoutError(
            f"layout {names} does not make source `{source}`: expected its native extract "
            f"{stem}.csv or {stem}.parquet in {source_dir}"
            + (" (found both; keep one)" if len(found) > 1 else "")
        )
    return found[0]


def adapt_delivery(
    *, source_dir: str | Path, out_dir: str | Path, layout: Layout | Sequence[Layout]
) -> AdaptSummary:
    """Write the contract extracts of a delivery in ``layout`` (one layout, or several that make
    different contracts) into the new folder ``out_dir``.

    Raises :class:`SourceLayoutError` for a missing file or column, :class:`MappingError` for
    a date format that does not read the delivered dates, :class:`LayoutConflictError` for two
    layouts making the same contract; nothing is left in ``out_dir`` then.
    """
    layouts = load_layouts([layout] if isinstance(layout, Layout) else list(layout))
    names = " + ".join(x.name for x in layouts)
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not source_dir.is_dir():
        raise InputDataError(f"delivery folder {source_dir} does not exist")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputDataError(
            f"--out {out_dir} exists and is not an empty folder; give a new folder"
        )
    if out_dir.resolve() == source_dir.resolve():
        raise InputDataError("--out must be a new folder, not the delivery folder itself")
    files = {
        x.name: {t: _table_files(source_dir, x.tables[t], x) for t in x.tables} for x in layouts
    }
    made = {s for x in layouts for s in x.outputs}
    native = {s: _native_file(source_dir, s, names) for s in SOURCES if s not in made}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.adapting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    summary = AdaptSummary(names, out_dir)
    try:
        (tmp / ADAPTED_DIR).mkdir()
        for x in layouts:
            record_ids: dict[tuple[str, int], str] = {}  # (source file, line) -> record id
            for source, mapping in x.outputs.items():
                log.info("adapting %s from layout %s", source, x.name)
                record_ids.update(_write_output(mapping, x, files[x.name], tmp, summary))
            if "dfe_ssda903" in x.checks:
                _write_dfe_failures(x, files[x.name], record_ids, tmp, summary)
            if "dfe_cin_section47" in x.checks:
                _write_section47_failures(x, files[x.name], tmp, summary)
        for path in native.values():
            shutil.copyfile(path, tmp / path.name)
            summary.copied.append(path.name)
        meta: dict[str, object] = {}
        delivered_meta = source_dir / "delivery.json"
        if delivered_meta.is_file():
            try:
                meta = dict(json.loads(delivered_meta.read_text(encoding="utf-8")))
            except (ValueError, TypeError):
                raise InputDataError(
                    f"{delivered_meta} is not a JSON object; correct or remove it"
                ) from None
        meta.pop("layout", None)  # an older delivery.json's single layout
        meta["layouts"] = [x.name for x in layouts]
        meta["adapted_sources"] = sorted(made)
        (tmp / "delivery.json").write_text(
            json.dumps(meta, sort_keys=True) + "\n", encoding="utf-8"
        )
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


@dataclass
class _DateCheck:
    values: int = 0
    failures: int = 0
    first_failure: str = ""


def _join_index(
    mapping: OutputMapping, layout: Layout, files: dict[str, list[Path]]
) -> tuple[dict[tuple[Value, ...], dict[str, Value]], int]:
    """The joined table by key (the first row of a repeated key wins; repeats are counted)."""
    assert mapping.join is not None
    table = layout.tables[mapping.join.table]
    index: dict[tuple[Value, ...], dict[str, Value]] = {}
    repeats = 0
    for path in files[table.name]:
        for row in read_table(path, table):
            key = tuple(row.values.get(c) for c in mapping.join.on)
            if key in index:
                repeats += 1
                continue
            index[key] = row.values
    return index, repeats


def _rows(table: SourceTable, paths: list[Path]) -> Iterator[tuple[int, Path, SourceRow]]:
    for i, path in enumerate(paths):
        for row in read_table(path, table):
            yield i, path, row


def _value(
    rule: ColumnRule,
    row: dict[str, Value],
    joined: dict[str, Value] | None,
    check: _DateCheck,
    where: str,
) -> str | None:
    if rule.kind == "value":
        return rule.value
    values = (joined or {}) if rule.table == JOINED else row
    v = values.get(rule.column)
    if rule.kind == "present":
        return "1" if v not in (None, [], "") else "0"
    if rule.kind == "flag":
        items = v if isinstance(v, list) else ([v] if isinstance(v, str) else [])
        if rule.any_of:
            return "1" if any(x in rule.any_of for x in items) else "0"
        return "1" if any(x not in rule.any_except for x in items) else "0"
    if isinstance(v, list):
        v = v[0] if v else None
    if v is None:
        return None
    if rule.date_format or rule.year_of_date:
        fmt = rule.date_format or rule.year_of_date
        assert fmt is not None
        check.values += 1
        try:
            parsed = datetime.strptime(v, fmt).date()
        except ValueError:
            check.failures += 1
            if not check.first_failure:
                check.first_failure = where
            return v  # as delivered: validation quarantines it as unparseable_date
        return parsed.isoformat() if rule.date_format else str(parsed.year)
    if rule.icd10_dotted and UNDOTTED_ICD10.fullmatch(v):
        return f"{v[:3]}.{v[3:]}"
    return rule.codes.get(v, v)


def _write_output(
    mapping: OutputMapping,
    layout: Layout,
    files: dict[str, list[Path]],
    tmp: Path,
    summary: AdaptSummary,
) -> dict[tuple[str, int], str]:
    """Write one contract's extract and its source lines (the rows of each of the mapping's
    parts, one table after the other); returns the record id written for each (source file,
    line)."""
    contract = mapping.contract
    record_ids: dict[tuple[str, int], str] = {}
    summary.source_files[mapping.source] = [
        p.name for part in mapping.all_parts for p in files[part.rows]
    ]
    out_path = tmp / f"{contract.file_stem}.csv"
    lines_path = tmp / ADAPTED_DIR / f"source_lines_{mapping.source}.csv"
    counts = _Counts()
    with (
        out_path.open("w", newline="", encoding="utf-8") as out_fh,
        lines_path.open("w", newline="", encoding="utf-8") as lines_fh,
    ):
        out = csv.writer(out_fh, lineterminator="\n")
        lines = csv.writer(lines_fh, lineterminator="\n")
        out.writerow(contract.column_names)
        lines.writerow(["output_line", "row_number", "record_id", "source_file", "source_line"])
        for part in mapping.all_parts:
            _write_part(part, layout, files, out, lines, counts, record_ids, summary)
    summary.rows[mapping.source] = counts.n
    summary.malformed[mapping.source] = counts.malformed
    summary.uncovered[mapping.source] = mapping.uncovered_columns()
    return record_ids


@dataclass
class _Counts:
    n: int = 0  # rows written
    malformed: int = 0
    good: int = 0  # well-formed rows written (validation's row number)


def _write_part(
    mapping: OutputMapping,
    layout: Layout,
    files: dict[str, list[Path]],
    out: Any,
    lines: Any,
    counts: _Counts,
    record_ids: dict[tuple[str, int], str],
    summary: AdaptSummary,
) -> None:
    """Write the rows of one table of an output mapping (one part) to its extract."""
    contract = mapping.contract
    table = layout.tables[mapping.rows]
    joined_index: dict[tuple[Value, ...], dict[str, Value]] = {}
    if mapping.join is not None:
        joined_index, repeats = _join_index(mapping, layout, files)
        if repeats:
            summary.warnings.append(
                f"{mapping.join.table}: {repeats:,} row(s) repeat a key "
                f"({', '.join(mapping.join.on)}) already seen; the first was used"
            )
    rules = [
        dataclasses.replace(r, table=JOINED)
        if mapping.join is not None and r.table == mapping.join.table
        else r
        for r in mapping.columns
    ]
    by_target = {r.target: r for r in rules}
    checks = {r.target: _DateCheck() for r in rules if r.date_format or r.year_of_date}
    paths = files[table.name]
    for file_index, path, row in _rows(table, paths):
        joined = None
        if mapping.join is not None:
            key = tuple(row.values.get(c) for c in mapping.join.on)
            joined = joined_index.get(key)
        record_id = row.values.get(mapping.record_id_column) if mapping.record_id_column else None
        if not isinstance(record_id, str):
            record_id = f"{mapping.record_id_prefix}{file_index:03d}L{row.line:09d}"
        cells: list[str | None] = [record_id]
        for name in contract.column_names[1:]:
            rule = by_target.get(name)
            cells.append(
                None
                if rule is None
                else _value(
                    rule,
                    row.values,
                    joined,
                    checks.get(name, _DateCheck()),
                    f"{path.name} line {row.line}",
                )
            )
        text = ["" if c is None else c for c in cells]
        counts.n += 1
        if row.malformed:
            counts.malformed += 1
            # one field too many: validation quarantines the line as malformed_line
            text += row.extra or [row.malformed]
            row_number = ""
        else:
            counts.good += 1
            row_number = str(counts.good)
        out.writerow(text)
        lines.writerow([counts.n + 1, row_number, record_id, path.name, row.line])
        record_ids[(path.name, row.line)] = record_id
    for target, check in checks.items():
        if (
            check.values
            and check.failures > DATE_FORMAT_FAILURE_SHARE * check.values
            and (check.values >= DATE_FORMAT_MIN_VALUES or check.failures == check.values)
        ):
            rule = by_target[target]
            raise MappingError(
                f"{layout.path}: outputs.{mapping.source}.{target}: "
                f"{check.failures:,} of {check.values:,} values of {rule.column} do not read "
                f"as {rule.date_format or rule.year_of_date!r} (first: {check.first_failure}; "
                "values not shown); correct the format in the layout"
            )


DFE_FAILURES_FILE = "dfe_ssda903_failures.csv"
SECTION47_FAILURES_FILE = "dfe_cin_section47_failures.csv"


def _write_section47_failures(
    layout: Layout, files: dict[str, list[Path]], tmp: Path, summary: AdaptSummary
) -> None:
    """The DfE's CIN census rules on the delivered Section 47 enquiries: one line per failure
    (rule, message, fields, source file and line)."""
    from deliveries.dfe_cin_rules import run_section47_rules

    table = layout.checks["dfe_cin_section47"]["section47"]
    enquiries, failures = run_section47_rules(files, layout, section47=table)
    summary.section47_enquiries = enquiries
    with (tmp / ADAPTED_DIR / SECTION47_FAILURES_FILE).open(
        "w", newline="", encoding="utf-8"
    ) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["rule", "message", "table", "fields", "source_file", "source_line"])
        for f in failures:
            w.writerow([f.code, f.message, f.table, f.fields, f.source_file, f.source_line])
            summary.section47_failures[f.code] = summary.section47_failures.get(f.code, 0) + 1


def _write_dfe_failures(
    layout: Layout,
    files: dict[str, list[Path]],
    record_ids: dict[tuple[str, int], str],
    tmp: Path,
    summary: AdaptSummary,
) -> None:
    """The DfE's SSDA903 rules on the delivered 903 tables: one line per failure (rule, table,
    source file and line, and the record id written for an Episodes line)."""
    from deliveries.dfe_rules import run_ssda903_rules

    roles = layout.checks["dfe_ssda903"]
    failures = run_ssda903_rules(files, layout, header=roles["header"], episodes=roles["episodes"])
    with (tmp / ADAPTED_DIR / DFE_FAILURES_FILE).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(
            ["rule", "message", "table", "fields", "source_file", "source_line", "record_id"]
        )
        for f in failures:
            rid = (
                record_ids.get((f.source_file, f.source_line), "") if f.table == "Episodes" else ""
            )
            w.writerow([f.code, f.message, f.table, f.fields, f.source_file, f.source_line, rid])
            summary.dfe_failures[f.code] = summary.dfe_failures.get(f.code, 0) + 1


def inspect_delivery(folder: str | Path) -> str:
    """What a delivery folder holds, as markdown: the layouts detected (and those delivery.json
    declares, when they differ), two layouts making one contract, and for each contract whether
    a layout makes it, a native extract is there, or it is missing, with the contract columns
    the layout leaves empty. Reads file names and delivery.json only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(f"delivery folder {folder} does not exist")
    layouts = [load_layout(n) for n in detect_layouts(folder)]
    made_by = {s: x for x in layouts for s in x.outputs}
    conflicts = sorted(s for s in made_by if sum(s in x.outputs for x in layouts) > 1)
    lines = [f"Delivery {folder}: layout `{x.name}` ({x.description})" for x in layouts] or [
        f"Delivery {folder}: no shipped layout detected (native contract extracts)"
    ]
    declared = [n for n in declared_layouts(folder) if n != "prelinked"]
    if declared and sorted(declared) != [x.name for x in layouts]:
        lines.append(f"delivery.json declares layout(s) {', '.join(declared)}")
    if conflicts:
        lines.append(
            f"CONFLICT: more than one detected layout makes {', '.join(conflicts)}; one "
            "delivery holds one of them: `cohort adapt` will refuse it"
        )
    lines += [
        "",
        "| contract | made from | contract columns left empty |",
        "|---|---|---|",
    ]
    for source, contract in SOURCES.items():
        if source in made_by:
            layout = made_by[source]
            mapping = layout.outputs[source]
            tables = [
                t
                for part in mapping.all_parts
                for t in [part.rows] + ([part.join.table] if part.join else [])
            ]
            made = " + ".join(f"{t} ({layout.tables[t].files})" for t in tables)
            empty = ", ".join(mapping.uncovered_columns()) or "none"
        else:
            found = [
                f"{contract.file_stem}.{ext}"
                for ext in ("csv", "parquet")
                if (folder / f"{contract.file_stem}.{ext}").is_file()
            ]
            made = f"native {found[0]}" if found else "MISSING"
            empty = "-"
        lines.append(f"| {source} | {made} | {empty} |")
    return "\n".join(lines)
