"""A layout: the declarative mapping from a delivery's own files onto the source contracts.

A layout YAML has two sections:

``tables``: the files of the delivery, by name. Each has a ``format`` (``csv``: one row per
line under a header; ``cin_census_xml``: one row per ``Assessments`` element of a children in
need census XML file; ``cin_section47_xml``: one row per ``Section47`` enquiry of the same
files, read for the DfE's Section 47 rules only: no contract column takes it), ``files`` (a file name or glob inside the delivery folder), the
``columns`` it must hold, ``optional_columns`` it may hold, and an optional unique ``key``.

``outputs``: one entry per contract the layout writes. ``rows`` names the table that gives one
output row per row; ``join: {table: T, by: [key columns]}`` adds the columns of another table by key
(named ``T.COLUMN``, e.g. ``header.DOB``);
``record_id`` takes the extract's row id column when present, else numbers rows by file and
line; ``columns`` maps each contract column to one rule:

* ``{from: COL}``: the text as delivered; with ``date: FORMAT`` parsed and written as ISO
  ``YYYY-MM-DD`` (a value that does not parse is written as delivered: validation quarantines it
  as ``unparseable_date``); with ``year_of_date: FORMAT`` the year of that date; with ``codes:
  {delivered: contract code}`` recoded (a code not listed is written as delivered: validation
  quarantines it as ``code_outside_list``);
* ``{present: COL}``: ``1`` when the column holds a value, else ``0``;
* ``{flag: COL, any_of: [codes]}`` / ``{flag: COL, any_except: [codes]}``: ``1`` when the
  repeated element ``COL`` holds one of (or one other than) the codes, else ``0``;
* ``{from: COL, icd10: dotted}``: an ICD-10 code written without its dot (``S060``, as HES
  writes it) gets the dot back (``S06.0``); a 3-character code or anything else is kept;
* ``{value: TEXT}``: the same text on every row (the key stage of an NPD key stage file).

An output may instead be ``parts:``, a list of such mappings (each with its own ``rows``,
``record_id`` and ``columns``): their rows are written one table after the other into the one
extract (NPD's key stage 2 file, then its key stage 4 file, into ``attainment``).

Every name and code is checked against the contracts when the layout is loaded: a mapping that
names a column no table declares, a contract column that does not exist, or a recoded code or
value outside the contract's code list (or, for a column without a code list, not matching its
pattern: an ECDS SNOMED CT concept recoded to something that is not ICD-10) is a
:class:`MappingError` naming the YAML file and entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml

from ground.errors import ConfigError, InputDataError
from schemas.contracts import SOURCES, Column, SourceContract, load_codelist

LAYOUT_DIR = Path(__file__).parent / "layouts"

TableFormat = Literal["csv", "cin_census_xml", "cin_section47_xml"]
FORMATS: tuple[str, ...] = ("csv", "cin_census_xml", "cin_section47_xml")

# The fields the CIN census XML reader gives each assessment row (the census guide's item names;
# the last four of ChildIdentifiers, LEA per child and RecordID are linkage-extract extensions).
CIN_FIELDS: tuple[str, ...] = (
    "ReferenceDate",
    "LEA",
    "LAchildID",
    "UPN",
    "FormerUPN",
    "UPNunknown",
    "PersonBirthDate",
    "ExpectedPersonBirthDate",
    "GenderCurrent",
    "PersonDeathDate",
    "PersonFirstName",
    "PersonSurname",
    "NHSNumber",
    "PostCode",
    "Ethnicity",
    "Disability",
    "CINreferralDate",
    "ReferralSource",
    "PrimaryNeedCode",
    "CINclosureDate",
    "ReasonForClosure",
    "DateOfInitialCPC",
    "ReferralNFA",
    "AssessmentActualStartDate",
    "AssessmentInternalReviewDate",
    "AssessmentAuthorisationDate",
    "AssessmentFactors",
    "RecordID",
    "CPPstartDate",
    "CPPendDate",
    "InitialCategoryOfAbuse",
    "LatestCategoryOfAbuse",
    "NumberOfPreviousCPP",
)
# repeated elements: a list per row
CIN_REPEATED: frozenset[str] = frozenset({"AssessmentFactors", "Disability"})
# The fields the CIN census XML reader gives each Section 47 enquiry row (``cin_section47_xml``):
# the file header, the child's LAchildID, its CINdetails' referral and closure dates, and the
# Section47 group's own items (the census guide's names; DateOfInitialCPC is the enquiry's).
SECTION47_ITEMS: tuple[str, ...] = (
    "S47ActualStartDate",
    "InitialCPCtarget",
    "DateOfInitialCPC",
    "ICPCnotRequired",
)
SECTION47_FIELDS: tuple[str, ...] = (
    "ReferenceDate",
    "LEA",
    "LAchildID",
    "CINreferralDate",
    "CINclosureDate",
    *SECTION47_ITEMS,
)

# checks a layout may ask for on its delivered tables: the tables each one reads (by role) and
# the format those tables must have
CHECKS: dict[str, tuple[str, ...]] = {
    "dfe_ssda903": ("header", "episodes"),
    "dfe_cin_section47": ("section47",),
}
CHECK_FORMATS: dict[str, str] = {"dfe_ssda903": "csv", "dfe_cin_section47": "cin_section47_xml"}


class MappingError(ConfigError):
    """A layout YAML is wrong: it names a missing column, an unknown code or a date format that
    does not read the delivered dates."""


class LayoutConflictError(ConfigError):
    """Two layouts of one delivery make the same contract's extract."""


class SourceLayoutError(InputDataError):
    """A delivery does not hold what its layout declares (a file or a column is missing)."""


@dataclass(frozen=True)
class SourceTable:
    """One table of a delivery in its own layout."""

    name: str
    format: TableFormat
    files: str
    columns: tuple[str, ...]
    optional_columns: tuple[str, ...] = ()
    key: tuple[str, ...] = ()

    @property
    def known_columns(self) -> tuple[str, ...]:
        if self.format == "cin_census_xml":
            return CIN_FIELDS
        if self.format == "cin_section47_xml":
            return SECTION47_FIELDS
        return self.columns + self.optional_columns


@dataclass(frozen=True)
class ColumnRule:
    """How one contract column is made from the delivered row."""

    target: str
    kind: Literal["from", "present", "flag", "value"]
    table: str  # the table the source column comes from (the rows table or the joined one)
    column: str  # empty for a `value` rule
    date_format: str | None = None
    year_of_date: str | None = None
    codes: dict[str, str] = field(default_factory=dict)
    any_of: tuple[str, ...] = ()
    any_except: tuple[str, ...] = ()
    icd10_dotted: bool = False
    value: str | None = None  # a `value` rule's text


@dataclass(frozen=True)
class Join:
    table: str
    on: tuple[str, ...]


@dataclass(frozen=True)
class OutputMapping:
    """How one contract's extract is made."""

    source: str
    rows: str
    join: Join | None
    record_id_column: str | None
    record_id_prefix: str
    columns: tuple[ColumnRule, ...]
    # further tables stacked after this one's rows into the same extract (`parts:`), each an
    # output mapping of its own (e.g. NPD's key stage 2 file, then its key stage 4 file)
    parts: tuple[OutputMapping, ...] = ()

    @property
    def contract(self) -> SourceContract:
        return SOURCES[self.source]

    @property
    def all_parts(self) -> tuple[OutputMapping, ...]:
        """This mapping and its stacked parts, in the order their rows are written."""
        return (self, *self.parts)

    def uncovered_columns(self) -> list[str]:
        """Contract columns no part of the mapping fills (all nullable: checked at load)."""
        covered = {r.target for m in self.all_parts for r in m.columns} | {"record_id"}
        return [c for c in self.contract.column_names if c not in covered]


@dataclass(frozen=True)
class Layout:
    """A delivery layout: its tables and the contract extracts made from them."""

    name: str
    description: str
    path: Path
    tables: dict[str, SourceTable]
    outputs: dict[str, OutputMapping]
    checks: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def passthrough_sources(self) -> list[str]:
        """Sources the layout does not make: read from their native contract files."""
        return [s for s in SOURCES if s not in self.outputs]


def shipped_layouts() -> dict[str, Path]:
    """The layouts shipped with the package, by name."""
    return {p.stem: p for p in sorted(LAYOUT_DIR.glob("*.yaml"))}


def load_layout(name_or_path: str | Path) -> Layout:
    """Load a shipped layout by name, or a layout YAML by path, and check it against the
    contracts."""
    shipped = shipped_layouts()
    if str(name_or_path) in shipped:
        path = shipped[str(name_or_path)]
    else:
        path = Path(name_or_path)
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            raise MappingError(
                f"layout {str(name_or_path)!r}: not a shipped layout ({', '.join(shipped)}) "
                "nor a layout YAML file"
            )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    return _parse_layout(raw, path)


def load_layouts(names: str | Sequence[str | Layout]) -> list[Layout]:
    """The layouts of one delivery: a name or YAML path, a comma list of them, or a list (of
    names, paths or loaded layouts). A delivery holds each contract's extract once, so two
    layouts that make the same contract (the English 903 and the Welsh looked-after return both
    make ``looked_after_episodes``) cannot be in one delivery: a :class:`LayoutConflictError`."""
    given = [names] if isinstance(names, str) else list(names)
    layouts: list[Layout] = []
    for item in given:
        if isinstance(item, Layout):
            layouts.append(item)
            continue
        parts = [n.strip() for n in item.split(",") if n.strip()]
        if not parts:
            raise MappingError("--layout: give a layout name")
        layouts += [load_layout(n) for n in parts]
    if not layouts:
        raise MappingError("--layout: give a layout name")
    maker: dict[str, str] = {}
    seen: set[str] = set()
    for layout in layouts:
        if layout.name in seen:
            raise LayoutConflictError(f"layout {layout.name} is named twice; name it once")
        seen.add(layout.name)
        for source in layout.outputs:
            if source in maker:
                raise LayoutConflictError(
                    f"layouts {maker[source]} and {layout.name} both make {source}; one delivery "
                    f"holds one extract per contract: adapt them as two deliveries, or leave one "
                    "out"
                )
            maker[source] = layout.name
    return layouts


def _need(d: Any, key: str, where: str, kind: type) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise MappingError(f"{where}: `{key}` missing")
    value = d[key]
    if not isinstance(value, kind):
        raise MappingError(f"{where}: `{key}` must be a {kind.__name__}")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise MappingError(f"{where}: give a list of names")
    return tuple(value)


def _parse_layout(raw: Any, path: Path) -> Layout:
    where = str(path)
    if not isinstance(raw, dict):
        raise MappingError(f"{where}: a layout is a mapping with `layout`, `tables`, `outputs`")
    name = _need(raw, "layout", where, str)
    tables: dict[str, SourceTable] = {}
    for tname, t in _need(raw, "tables", where, dict).items():
        tw = f"{where}: tables.{tname}"
        fmt = _need(t, "format", tw, str)
        if fmt not in FORMATS:
            raise MappingError(f"{tw}: format {fmt!r} unknown; known: {', '.join(FORMATS)}")
        table = SourceTable(
            name=tname,
            format=fmt,  # type: ignore[arg-type]
            files=_need(t, "files", tw, str),
            columns=_names(t.get("columns"), f"{tw}.columns"),
            optional_columns=_names(t.get("optional_columns"), f"{tw}.optional_columns"),
            key=_names(t.get("key"), f"{tw}.key"),
        )
        unknown = [c for c in table.key if c not in table.known_columns]
        if unknown:
            raise MappingError(f"{tw}.key: column(s) {', '.join(unknown)} not in the table")
        if fmt != "csv":
            given = table.known_columns
            unknown = [c for c in table.columns + table.optional_columns if c not in given]
            if unknown:
                raise MappingError(
                    f"{tw}: {', '.join(unknown)} not a field the CIN census reader gives "
                    f"({fmt}); known: {', '.join(given)}"
                )
        tables[tname] = table
    outputs: dict[str, OutputMapping] = {}
    for source, o in _need(raw, "outputs", where, dict).items():
        outputs[source] = _parse_output(source, o, tables, f"{where}: outputs.{source}")
    checks: dict[str, dict[str, str]] = {}
    for check, roles in (raw.get("checks") or {}).items():
        cw = f"{where}: checks.{check}"
        if check not in CHECKS:
            raise MappingError(f"{cw}: unknown check; known: {', '.join(CHECKS)}")
        if not isinstance(roles, dict) or set(roles) != set(CHECKS[check]):
            raise MappingError(f"{cw}: name the tables {', '.join(CHECKS[check])}")
        for role, tname in roles.items():
            if tname not in tables or tables[tname].format != CHECK_FORMATS[check]:
                raise MappingError(
                    f"{cw}.{role}: {tname!r} is not a {CHECK_FORMATS[check]} table of the layout"
                )
        checks[check] = {str(k): str(v) for k, v in roles.items()}
    return Layout(name, str(raw.get("description", "")), path, tables, outputs, checks)


def _parse_output(source: str, o: Any, tables: dict[str, SourceTable], where: str) -> OutputMapping:
    if source not in SOURCES:
        raise MappingError(f"{where}: no source contract {source!r}; known: {', '.join(SOURCES)}")
    contract = SOURCES[source]
    if isinstance(o, dict) and "parts" in o:  # several tables stacked into one extract
        parts = o["parts"]
        if len(o) != 1 or not isinstance(parts, list) or not parts:
            raise MappingError(
                f"{where}.parts: give a list of mappings (rows, record_id, columns) and nothing "
                "beside it"
            )
        if any(isinstance(p, dict) and "parts" in p for p in parts):
            raise MappingError(f"{where}.parts: a part cannot have parts of its own")
        first, *rest = (
            _parse_output(source, p, tables, f"{where}.parts[{i}]") for i, p in enumerate(parts)
        )
        return replace(first, parts=tuple(rest))
    rows = _need(o, "rows", where, str)
    if rows not in tables:
        raise MappingError(f"{where}.rows: no table {rows!r}; tables: {', '.join(tables)}")
    join = None
    if o.get("join") is not None:
        jt = _need(o["join"], "table", f"{where}.join", str)
        if jt not in tables:
            raise MappingError(f"{where}.join: no table {jt!r}; tables: {', '.join(tables)}")
        # `by`, not `on`: YAML reads a bare `on` as true
        on = _names(_need(o["join"], "by", f"{where}.join", list), f"{where}.join.by")
        for t in (rows, jt):
            missing = [c for c in on if c not in tables[t].known_columns]
            if missing:
                raise MappingError(
                    f"{where}.join.by: column(s) {', '.join(missing)} not in table {t}"
                )
        join = Join(jt, on)
    rid = o.get("record_id") or {}
    rid_col = rid.get("column")
    if rid_col is not None and rid_col not in tables[rows].known_columns:
        raise MappingError(f"{where}.record_id: column {rid_col!r} not in table {rows}")
    rules = []
    for target, spec in _need(o, "columns", where, dict).items():
        rules.append(_parse_rule(target, spec, contract, rows, join, tables, f"{where}.{target}"))
    mapping = OutputMapping(
        source=source,
        rows=rows,
        join=join,
        record_id_column=rid_col,
        record_id_prefix=str(rid.get("otherwise_number_as", source[:4].upper())),
        columns=tuple(rules),
    )
    required = [
        c.name for c in contract.columns if not c.nullable and c.name in mapping.uncovered_columns()
    ]
    if required:
        raise MappingError(
            f"{where}: required contract column(s) {', '.join(required)} not mapped; map each "
            "to a delivered column"
        )
    return mapping


def _parse_rule(
    target: str,
    spec: Any,
    contract: SourceContract,
    rows: str,
    join: Join | None,
    tables: dict[str, SourceTable],
    where: str,
) -> ColumnRule:
    if target not in contract.column_names or target == "record_id":
        raise MappingError(
            f"{where}: `{target}` is not a column of contract {contract.name} (record_id is "
            f"set by `record_id:`); columns: {', '.join(contract.column_names[1:])}"
        )
    if not isinstance(spec, dict):
        raise MappingError(f"{where}: give a rule such as {{from: COLUMN}}")
    if "value" in spec:  # the same text on every row (e.g. the key stage of an NPD file)
        value = spec["value"]
        if len(spec) != 1 or not isinstance(value, str) or not value:
            raise MappingError(f"{where}.value: give the text alone, e.g. {{value: KS2}}")
        _check_contract_codes([value], contract.column(target), f"{where}.value")
        return ColumnRule(target=target, kind="value", table=rows, column="", value=value)
    kinds = [k for k in ("from", "present", "flag") if k in spec]
    if len(kinds) != 1:
        raise MappingError(f"{where}: give exactly one of `from`, `present`, `flag`, `value`")
    kind = kinds[0]
    ref = spec[kind]
    if not isinstance(ref, str) or not ref:
        raise MappingError(f"{where}.{kind}: give a column name")
    table, column = ref.split(".", 1) if "." in ref else (rows, ref)
    allowed = [rows] + ([join.table] if join else [])
    if table not in allowed:
        raise MappingError(f"{where}.{kind}: table {table!r} is neither {' nor '.join(allowed)}")
    if column not in tables[table].known_columns:
        raise MappingError(
            f"{where}.{kind}: column {column!r} is not declared in table {table} "
            f"(declared: {', '.join(tables[table].known_columns)})"
        )
    declared = contract.column(target)
    codes = spec.get("codes") or {}
    if not isinstance(codes, dict):
        raise MappingError(f"{where}.codes: give a mapping from delivered code to contract code")
    codes = {str(k): str(v) for k, v in codes.items()}
    _check_contract_codes(codes.values(), declared, f"{where}.codes")
    fmt = spec.get("date")
    year_fmt = spec.get("year_of_date")
    for f, key in ((fmt, "date"), (year_fmt, "year_of_date")):
        if f is not None:
            _check_date_format(f, f"{where}.{key}")
    if fmt is not None and declared.dtype != "date":
        raise MappingError(f"{where}.date: contract column {target} is not a date")
    if kind == "flag":
        if tables[table].format != "csv" and column not in CIN_REPEATED:
            raise MappingError(
                f"{where}.flag: {column} is not a repeated element "
                f"({', '.join(sorted(CIN_REPEATED))})"
            )
        if ("any_of" in spec) == ("any_except" in spec):
            raise MappingError(f"{where}: a flag needs one of `any_of` or `any_except`")
    return ColumnRule(
        target=target,
        kind=kind,  # type: ignore[arg-type]
        table=table,
        column=column,
        date_format=fmt,
        year_of_date=year_fmt,
        codes=codes,
        any_of=_names(spec.get("any_of"), f"{where}.any_of"),
        any_except=_names(spec.get("any_except"), f"{where}.any_except"),
        icd10_dotted=_icd10(spec.get("icd10"), f"{where}.icd10"),
    )


def _check_contract_codes(codes: Iterable[str], declared: Column, where: str) -> None:
    """Codes a layout writes into a contract column: each must be in the column's code list,
    or match its pattern when it has no code list (an ECDS concept recoded to ICD-10)."""
    if declared.codelist:
        known = load_codelist(declared.codelist)
        unknown = sorted({v for v in codes if v not in known})
        if unknown:
            raise MappingError(
                f"{where}: {', '.join(unknown)} not in code list {declared.codelist} of "
                f"contract column {declared.name}; codes: {', '.join(known)}"
            )
    elif declared.pattern:
        unmatched = sorted({v for v in codes if not re.fullmatch(declared.pattern, v)})
        if unmatched:
            raise MappingError(
                f"{where}: {', '.join(repr(v) for v in unmatched)} does not match the pattern "
                f"{declared.pattern} of contract column {declared.name}"
            )


def _icd10(value: Any, where: str) -> bool:
    if value is None:
        return False
    if value != "dotted":
        raise MappingError(f"{where}: the only ICD-10 rewriting is `dotted` (S060 -> S06.0)")
    return True


def _check_date_format(fmt: Any, where: str) -> None:
    if not isinstance(fmt, str) or not all(d in fmt for d in ("%Y", "%m", "%d")):
        raise MappingError(f"{where}: {fmt!r} is not a date format with %Y, %m and %d")
    probe = date(2021, 3, 31)
    if probe.strftime(fmt) == fmt:
        raise MappingError(f"{where}: {fmt!r} is not a date format")
