"""Readers of a delivery's own files: each yields one row per record with its source line.

A row is ``SourceRow(line, values, malformed)``: ``values`` maps a declared column to its text
(``None`` when empty or absent; a list for a repeated XML element) and ``malformed`` says why the
record cannot be read as declared (a CSV line with too many or too few fields, an XML element
given twice where one is expected). A malformed record is still passed on: the adapter writes it
as a malformed line, which validation quarantines (``malformed_line``), so rows in = rows
accepted + rows quarantined holds across the adapter too. No value is ever logged or put in a
message.
"""

from __future__ import annotations

import csv
import xml.parsers.expat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deliveries.mapping import (
    CIN_FIELDS,
    CIN_REPEATED,
    SECTION47_FIELDS,
    SECTION47_ITEMS,
    SourceLayoutError,
    SourceTable,
)

XML_CHUNK_BYTES = 1 << 20

Value = str | list[str] | None


@dataclass
class SourceRow:
    line: int
    values: dict[str, Value]
    malformed: str | None = None
    extra: list[str] = field(default_factory=list)


def read_table(path: Path, table: SourceTable) -> Iterator[SourceRow]:
    if table.format == "csv":
        return read_csv(path, table)
    if table.format == "cin_section47_xml":
        return read_cin_census_xml(path, table, unit="Section47")
    return read_cin_census_xml(path, table)


def read_csv(path: Path, table: SourceTable) -> Iterator[SourceRow]:
    """Rows of a CSV file with a header; the declared columns must all be in the header. A file
    that is not UTF-8, or that the CSV reader cannot split, stops with the line it failed on."""
    line = 1
    try:
        for row in _read_csv(path, table):
            line = row.line
            yield row
    except UnicodeDecodeError:
        raise SourceLayoutError(
            f"{path.name} (table {table.name}) is not UTF-8 after line {line}; re-export it as "
            "UTF-8"
        ) from None
    except csv.Error as exc:
        raise SourceLayoutError(
            f"{path.name} (table {table.name}) cannot be read as CSV after line {line} "
            f"({str(exc).split(':', 1)[0]}); re-export it"
        ) from None


def _read_csv(path: Path, table: SourceTable) -> Iterator[SourceRow]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise SourceLayoutError(f"{path.name} (table {table.name}) is empty; expected a header")
        header = [h.strip() for h in header]
        missing = [c for c in table.columns if c not in header]
        if missing:
            raise SourceLayoutError(
                f"{path.name} (table {table.name}): column(s) {', '.join(missing)} missing "
                f"from the header ({len(header)} column(s) found, not shown); expected: "
                f"{', '.join(table.columns)}; re-export the file or correct the layout"
            )
        wanted = [c for c in table.known_columns if c in header]
        position = {c: header.index(c) for c in wanted}
        width = len(header)
        for fields in reader:
            if not fields:  # a blank line
                continue
            row = SourceRow(
                reader.line_num,
                {
                    c: (fields[i] if i < len(fields) and fields[i] != "" else None)
                    for c, i in position.items()
                },
            )
            if len(fields) > width:
                row.malformed = "too_many_fields"
                row.extra = fields[width:]
            elif len(fields) < width:
                row.malformed = "too_few_fields"
            yield row


@dataclass
class _Scope:
    values: dict[str, Value] = field(default_factory=dict)
    duplicated: bool = False
    line: int = 0


class _CinCensusParser:
    """Children in need census XML: one row per ``Assessments`` element, carrying the file
    header (``ReferenceDate``, ``LEA``), its ``Child`` (identifiers, characteristics), its
    ``CINdetails`` and the child-protection plan of that episode in force at the assessment (the
    latest starting on or before it; the only one if there is one).

    With ``unit="Section47"``: one row per ``Section47`` element instead, carrying the file
    header, the child's ``LAchildID`` and its ``CINdetails``' referral and closure dates."""

    def __init__(self, path: Path, unit: str = "Assessments") -> None:
        self.path = path
        self.unit = unit
        # groups not read: the ones no row needs (for Section 47 rows, a CINdetails-level
        # DateOfInitialCPC must not be taken for the enquiry's, so it is dropped in emit)
        self.skipped = frozenset(
            {"CINPlanDates", "Reviews"} | ({"Section47"} if unit == "Assessments" else set())
        )
        self.fields = frozenset(CIN_FIELDS) | (
            frozenset(SECTION47_ITEMS) if unit == "Section47" else frozenset()
        )
        self.section47: list[_Scope] = []
        self.parser = xml.parsers.expat.ParserCreate()
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        self.parser.CharacterDataHandler = self.text
        self.stack: list[str] = []
        self.buffer: list[str] = []
        self.header = _Scope()
        self.child = _Scope()
        self.details = _Scope()
        self.assessments: list[_Scope] = []
        self.plans: list[_Scope] = []
        self.current: _Scope | None = None  # the assessment or plan being read
        self.skip_depth = 0
        self.rows: list[SourceRow] = []

    @staticmethod
    def local(name: str) -> str:
        return name.rsplit("}", 1)[-1].rsplit(":", 1)[-1]

    def start(self, name: str, attrs: dict[str, str]) -> None:
        name = self.local(name)
        self.stack.append(name)
        self.buffer = []
        if self.skip_depth or name in self.skipped:
            self.skip_depth += 1
            return
        line = self.parser.CurrentLineNumber
        if name == "Child":
            self.child = _Scope(line=line)
        elif name == "CINdetails":
            self.details = _Scope(line=line)
            self.assessments, self.plans, self.section47 = [], [], []
        elif name == "Assessments":
            self.current = _Scope(line=line)
            self.assessments.append(self.current)
        elif name == "Section47":
            self.current = _Scope(line=line)
            self.section47.append(self.current)
        elif name == "ChildProtectionPlans":
            self.current = _Scope(line=line)
            self.plans.append(self.current)

    def text(self, data: str) -> None:
        self.buffer.append(data)

    def end(self, name: str) -> None:
        name = self.local(name)
        self.stack.pop()
        if self.skip_depth:
            self.skip_depth -= 1
            return
        if name in ("Assessments", "ChildProtectionPlans", "Section47"):
            self.current = None
        elif name == "CINdetails":
            if self.unit == "Section47":
                self.emit_section47()
            else:
                self.emit()
        elif name in self.fields:
            value = "".join(self.buffer).strip() or None
            scope = self.scope_for()
            if name in CIN_REPEATED:
                listed = scope.values.setdefault(name, [])
                if value is not None and isinstance(listed, list):
                    listed.append(value)
            elif name in scope.values:
                scope.duplicated = True
            else:
                scope.values[name] = value
        self.buffer = []

    def scope_for(self) -> _Scope:
        if self.current is not None:
            return self.current
        if "CINdetails" in self.stack:
            return self.details
        if "Child" in self.stack:
            return self.child
        return self.header

    def emit(self) -> None:
        for a in self.assessments:
            plan = self.plan_for(a)
            values: dict[str, Value] = {f: None for f in CIN_FIELDS}
            for f in CIN_REPEATED:
                values[f] = []
            for scope in (self.header, self.child, self.details, plan, a):
                if scope is not None:
                    values.update(scope.values)
            scopes = (self.child, self.details, a, plan)
            bad = any(s is not None and s.duplicated for s in scopes)
            self.rows.append(SourceRow(a.line, values, "element_repeated" if bad else None))

    def emit_section47(self) -> None:
        details = {k: v for k, v in self.details.values.items() if k != "DateOfInitialCPC"}
        for enquiry in self.section47:
            values: dict[str, Value] = {f: None for f in SECTION47_FIELDS}
            for scope_values in (self.header.values, self.child.values, details, enquiry.values):
                values.update({k: v for k, v in scope_values.items() if k in values})
            bad = any(s.duplicated for s in (self.child, self.details, enquiry))
            self.rows.append(SourceRow(enquiry.line, values, "element_repeated" if bad else None))

    def plan_for(self, assessment: _Scope) -> _Scope | None:
        if len(self.plans) <= 1:
            return self.plans[0] if self.plans else None
        day = assessment.values.get("AssessmentActualStartDate")
        started = [
            p
            for p in self.plans
            if isinstance(p.values.get("CPPstartDate"), str)
            and isinstance(day, str)
            and str(p.values["CPPstartDate"]) <= day
        ]
        return max(started, key=lambda p: str(p.values["CPPstartDate"])) if started else None


def read_cin_census_xml(
    path: Path, table: SourceTable, unit: str = "Assessments"
) -> Iterator[SourceRow]:
    """Rows of a children in need census XML file, streamed: one per ``unit`` element
    (``Assessments`` or ``Section47``)."""
    p = _CinCensusParser(path, unit)
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(XML_CHUNK_BYTES)
            try:
                p.parser.Parse(chunk, not chunk)
            except xml.parsers.expat.ExpatError as exc:
                raise SourceLayoutError(
                    f"{path.name} (table {table.name}) is not well-formed XML at line "
                    f"{exc.lineno}: {xml.parsers.expat.ErrorString(exc.code)}; re-export it"
                ) from None
            yield from p.rows
            p.rows = []
            if not chunk:
                break
