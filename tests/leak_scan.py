"""An independent leak scan over everything a run wrote: identifiers, small counts, remote requests.

The pipeline promises that identifiers (names, dates of birth, postcodes, health and pupil
numbers, local-authority child ids) stay in the linkage zone, that what it publishes (the release
folder, the report, Prefect artifacts and logs) passes disclosure control, and that nothing it
writes makes a request to a remote server when opened. This module checks those promises from the
outside, knowing only the delivery a run was made from, the run folder and the Prefect home the
run used; it shares no code with the pipeline's own disclosure control.

``scan_run(run, delivery, prefect_home, temp_dir)`` returns a :class:`ScanReport` whose
``findings`` are ``(file, kind, context)`` with every identifier in ``context`` masked.

What is scanned (every file under the run folder, the Prefect home and the run's own ``TMPDIR`` if
it was given one, except :data:`LINKAGE_ZONE`):

* raw bytes of every file (decoded as UTF-8 with replacement), so a copy in any text format, a
  sqlite page or a DuckDB block that stores a string uncompressed is found;
* DuckDB files opened read-only: every column of every table cast to text, one line per row (DuckDB
  compresses strings, so raw bytes alone can miss them);
* SQLite files (Prefect's database): every column of every table as text, one line per row (the
  database is copied with its WAL to a temporary folder first, so the scan never touches it);
* Parquet files: every column as text, one line per row; ``.gz`` files: decompressed.
* images and fonts (:data:`MEDIA_SUFFIXES`) are scanned as raw bytes for numbers and postcodes,
  not for name pairs (binary noise is full of letter runs; pixel data is compressed, so text drawn
  into a figure cannot be read back): listed in ``ScanReport.notes``.

Identifier kinds and how each is matched (values come from the delivery's identifier columns, as
declared by the contracts in :mod:`schemas.contracts`):

* ``nhs_number``: a token of exactly 10 digits (or ``ddd ddd dddd``) equal to a delivered number;
* ``upn``: a letter and 12 digits equal to a delivered pupil number;
* ``la_child_id``: ``XXX-dddddd`` equal to a delivered local-authority child id;
* ``postcode``: a full postcode (with or without its space) equal to a delivered one;
* ``name_pair``: a delivered first name and the surname delivered with it in the same record,
  near each other in text (at most :data:`NAME_WINDOW` characters apart, either order) or in
  two cells of the same table row. Names alone are not searched for: first names and many
  surnames (Jones, Barley, Carton, Abby, ...) are ordinary words that appear in library text, and
  a name says little about a person until it is paired;
* ``date_of_birth``: dates are everywhere in a run (index dates, admissions, the study window) and
  every day of the birth cohorts is somebody's birthday, so a date alone is not searched for. A
  delivered date of birth (ISO ``yyyy-mm-dd`` or ``dd/mm/yyyy``) is a finding when it is written
  within :data:`DOB_CONTEXT` characters of another identifier found above; and a table column
  whose name mentions birth or dob (``week_of_birth``...) is a finding when its dates fall on more
  than one weekday, i.e. when it holds exact dates rather than weeks.

Small counts are checked in what is published: ``release/*.csv`` and ``release/*.txt``,
``report.html`` (tables and text), the ``data`` of every Prefect artifact and every Prefect log
message. A count is a cell of a column named in :data:`COUNT_COLUMNS` (or matching
:data:`COUNT_COLUMN_PATTERN`), a ``value`` whose ``item`` is such a name, or a number written
before a count noun in text (:data:`COUNT_NOUNS`, "12 records") or after a count word ("excluded
1", "n = 3"). Estimates, percentages, years, ages, ids and step numbers are not counts and are
never in those columns. A count is a ``small_count`` finding when it is above 0 and below the
disclosure threshold, an ``unrounded_count`` finding when it is not a multiple of the rounding
base (both from ``RUN/results/model_settings.yaml``'s ``disclosure`` block, default 10 and 5).

``remote_request``: an ``http://`` or ``https://`` address in an HTML, JavaScript, CSS or SVG file
the run wrote (other than XML namespace names, :data:`NAMESPACE_URI_PREFIXES`).
"""

from __future__ import annotations

import csv
import functools
import gzip
import html
import io
import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import yaml

from schemas.contracts import SOURCES

# The linkage zone: the only place identifiers may be. Paths relative to the run folder; a
# directory excludes everything under it. `linkage_zone.tmp` is the linkage zone's scratch
# folder (DuckDB spill files of the linkage stage, ground/db.py LINKAGE_SCRATCH_DIR).
LINKAGE_ZONE: tuple[str, ...] = (
    "linkage_zone.duckdb",
    "linkage_zone.duckdb.wal",
    "linkage_zone.tmp",
)

NAME_WINDOW = 40
DOB_CONTEXT = 200
CONTEXT_CHARS = 30

COUNT_COLUMNS: frozenset[str] = frozenset(
    {
        "n",
        "total",
        "count",
        "children",
        "persons",
        "records",
        "events",
        "rows",
        "rows_read",
        "rows_staged",
        "rows_quarantined",
        "staged",
        "quarantined",
        "remaining",
        "excluded",
        "linked",
        "unlinked",
        "not_linked",
        "at_risk",
        "number_at_risk",
    }
)
# n_exposed, n_CLA, n_remaining, events_exposed, exposed_events, rows_staged, count_unexpected...
COUNT_COLUMN_PATTERN = re.compile(
    r"^(n_\w+|\w+_n|events_\w+|\w+_events|rows_\w+|count_\w+|\w+_count)$"
)
COUNT_NOUNS = (
    "children",
    "child",
    "persons",
    "people",
    "records",
    "rows",
    "events",
    "pupils",
    "episodes",
    "admissions",
    "identity profiles",
)
COUNT_WORDS = ("excluded", "quarantined", "staged", "events", "n", "children", "remaining")

NAMESPACE_URI_PREFIXES = ("http://www.w3.org/",)
WEB_SUFFIXES = frozenset({".html", ".htm", ".js", ".css", ".svg"})
MEDIA_SUFFIXES = frozenset(
    {".png", ".gif", ".ico", ".jpg", ".jpeg", ".otf", ".ttf", ".woff", ".woff2"}
)

IDENTIFIER_KINDS = ("nhs_number", "upn", "la_child_id", "postcode", "name_pair", "date_of_birth")
COUNT_KINDS = ("small_count", "unrounded_count")


@dataclass(frozen=True)
class Finding:
    """One thing found: the file (``RUN/...`` or ``PREFECT_HOME/...``), its kind, masked context."""

    file: str
    kind: str
    context: str

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}: {self.context}"


@dataclass
class ScanReport:
    findings: list[Finding] = field(default_factory=list)
    files_scanned: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of_kind(self, *kinds: str) -> list[Finding]:
        return [f for f in self.findings if f.kind in kinds]

    @property
    def identifier_findings(self) -> list[Finding]:
        return self.of_kind(*IDENTIFIER_KINDS)

    @property
    def count_findings(self) -> list[Finding]:
        return self.of_kind(*COUNT_KINDS)

    @property
    def remote_findings(self) -> list[Finding]:
        return self.of_kind("remote_request")


# --- identifiers of the delivery ----------------------------------------------------------------

# a whole token: a run of 10 digits inside a hex digest or key is not a health number
NHS_RE = re.compile(r"(?<![0-9A-Za-z])([0-9]{10}|[0-9]{3} [0-9]{3} [0-9]{4})(?![0-9A-Za-z])")
UPN_RE = re.compile(r"(?<![A-Za-z0-9])([A-Z][0-9]{12})(?![0-9])")
LA_ID_RE = re.compile(r"(?<![A-Za-z0-9-])([A-Z0-9]{3,4}-[0-9]{6,8})(?![0-9])")
POSTCODE_RE = re.compile(
    r"(?<![A-Za-z0-9])([A-Z]{1,2}[0-9][0-9A-Z]? ?[0-9][A-Z]{2})(?![A-Za-z0-9])"
)
ISO_DATE_RE = re.compile(r"(?<![0-9])([0-9]{4})-([0-9]{2})-([0-9]{2})(?![0-9])")
UK_DATE_RE = re.compile(r"(?<![0-9])([0-9]{2})/([0-9]{2})/([0-9]{4})(?![0-9])")
WORD_RE = re.compile(r"[^\W\d_][^\W\d_'’-]*(?:['’-][^\W\d_]+)*")


def _norm_postcode(text: str) -> str:
    return text.replace(" ", "").upper()


def _parse_date(text: str) -> date | None:
    text = text.strip()
    for pattern, order in ((r"([0-9]{4})-([0-9]{2})-([0-9]{2})", "ymd"),
                           (r"([0-9]{2})/([0-9]{2})/([0-9]{4})", "dmy"),
                           (r"([0-9]{4})([0-9]{2})([0-9]{2})", "ymd")):  # fmt: skip
        m = re.fullmatch(pattern, text)
        if m:
            a, b, c = (int(x) for x in m.groups())
            y, mo, d = (a, b, c) if order == "ymd" else (c, b, a)
            try:
                return date(y, mo, d)
            except ValueError:
                return None
    return None


@dataclass
class DeliveryIdentifiers:
    """Every identifier value of a delivery, normalised for matching."""

    nhs_numbers: set[str] = field(default_factory=set)
    upns: set[str] = field(default_factory=set)
    la_child_ids: set[str] = field(default_factory=set)
    postcodes: set[str] = field(default_factory=set)
    dates_of_birth: set[date] = field(default_factory=set)
    # surname (lower case) -> first names (lower case) delivered with it in one record
    name_pairs: dict[str, set[str]] = field(default_factory=dict)

    @property
    def first_names(self) -> set[str]:
        return set().union(*self.name_pairs.values()) if self.name_pairs else set()

    @functools.cached_property
    def first_name_set(self) -> frozenset[str]:
        """The first names, computed once (read after the delivery is loaded)."""
        return frozenset(self.first_names)

    def is_pair(self, a: str, b: str) -> bool:
        a, b = a.lower(), b.lower()
        return a in self.name_pairs.get(b, ()) or b in self.name_pairs.get(a, ())

    def add_record(self, row: dict[str, str], roles: dict[str, str]) -> None:
        values = {role: (row.get(col) or "").strip() for col, role in roles.items()}
        nhs = values.get("nhs_number", "").replace(" ", "")
        if re.fullmatch(r"[0-9]{10}", nhs):
            self.nhs_numbers.add(nhs)
        upn = values.get("upn", "").upper()
        if re.fullmatch(r"[A-Z][0-9]{12}", upn):
            self.upns.add(upn)
        la_id = values.get("la_child_id", "").upper()
        if LA_ID_RE.fullmatch(la_id):
            self.la_child_ids.add(la_id)
        postcode = _norm_postcode(values.get("postcode", ""))
        if POSTCODE_RE.fullmatch(postcode):
            self.postcodes.add(postcode)
        dob = _parse_date(values.get("date_of_birth", ""))
        if dob is not None:
            self.dates_of_birth.add(dob)
        first, surname = values.get("first_name", "").lower(), values.get("surname", "").lower()
        if len(first) >= 2 and len(surname) >= 2:
            self.name_pairs.setdefault(surname, set()).add(first)

    @classmethod
    def from_delivery(cls, delivery: Path) -> DeliveryIdentifiers:
        ids = cls()
        for contract in SOURCES.values():
            roles = {c.name: c.linkage_role for c in contract.columns if c.linkage_role}
            for row in _delivery_rows(delivery, contract.file_stem):
                ids.add_record(row, roles)
        if not ids.nhs_numbers and not ids.name_pairs:
            raise ValueError(f"no identifiers read from the delivery in {delivery}")
        return ids


def _delivery_rows(delivery: Path, stem: str) -> Iterator[dict[str, str]]:
    csv_path, parquet_path = delivery / f"{stem}.csv", delivery / f"{stem}.parquet"
    if csv_path.exists():
        with csv_path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
            yield from csv.DictReader(fh)
    elif parquet_path.exists():
        import duckdb

        con = duckdb.connect()
        rel = con.execute("SELECT * FROM read_parquet(?)", [str(parquet_path)])
        names = [d[0] for d in rel.description]
        for rec in rel.fetchall():
            yield {n: "" if v is None else str(v) for n, v in zip(names, rec, strict=True)}


# --- masking ------------------------------------------------------------------------------------


class _Masker:
    def __init__(self, ids: DeliveryIdentifiers) -> None:
        self.names = set(ids.name_pairs) | ids.first_names

    def __call__(self, text: str, start: int, end: int, kind: str) -> str:
        left = text[max(0, start - CONTEXT_CHARS) : start]
        right = text[end : end + CONTEXT_CHARS]
        return (self._mask(left) + f"<{kind}>" + self._mask(right)).replace("\n", "⏎")

    def _mask(self, text: str) -> str:
        text = re.sub(r"[0-9]", "#", text)
        text = WORD_RE.sub(
            lambda m: "<name>" if m.group(0).lower() in self.names else m.group(0), text
        )
        return "".join(c if c.isprintable() else "·" for c in text)


# --- identifier scan of one text ----------------------------------------------------------------


def scan_text_for_identifiers(
    text: str, label: str, ids: DeliveryIdentifiers, rows: bool = False, names: bool = True
) -> list[Finding]:
    """Identifier findings in ``text``. With ``rows``, each line is one table row whose cells are
    separated by ``" | "``, and a name pair may sit in any two cells of the row or inside one
    cell. Without ``names``, name pairs are not looked for (images and fonts)."""
    mask = _Masker(ids)
    hits: list[tuple[int, int, str]] = []
    for m in NHS_RE.finditer(text):
        if m.group(1).replace(" ", "") in ids.nhs_numbers:
            hits.append((m.start(1), m.end(1), "nhs_number"))
    for m in UPN_RE.finditer(text):
        if m.group(1) in ids.upns:
            hits.append((m.start(1), m.end(1), "upn"))
    for m in LA_ID_RE.finditer(text):
        if m.group(1) in ids.la_child_ids:
            hits.append((m.start(1), m.end(1), "la_child_id"))
    for m in POSTCODE_RE.finditer(text):
        if _norm_postcode(m.group(1)) in ids.postcodes:
            hits.append((m.start(1), m.end(1), "postcode"))
    if rows:
        hits.extend(_name_pairs_in_rows(text, ids))
    elif names:
        hits.extend(_name_pairs_in_text(text, ids))
    findings = [Finding(label, kind, mask(text, s, e, kind)) for s, e, kind in hits]
    # dates of birth next to another identifier
    anchors = sorted(s for s, _, _ in hits)
    if anchors:
        for rx, order in ((ISO_DATE_RE, "ymd"), (UK_DATE_RE, "dmy")):
            for m in rx.finditer(text):
                a, b, c = (int(x) for x in m.groups())
                try:
                    d = date(a, b, c) if order == "ymd" else date(c, b, a)
                except ValueError:
                    continue
                if d in ids.dates_of_birth and _near(anchors, m.start(), DOB_CONTEXT):
                    findings.append(
                        Finding(
                            label, "date_of_birth", mask(text, m.start(), m.end(), "date_of_birth")
                        )
                    )
    return findings


def _near(sorted_positions: list[int], pos: int, distance: int) -> bool:
    import bisect

    i = bisect.bisect_left(sorted_positions, pos - distance)
    return i < len(sorted_positions) and sorted_positions[i] <= pos + distance


def _name_pairs_in_text(text: str, ids: DeliveryIdentifiers) -> Iterator[tuple[int, int, str]]:
    """A delivered first name and its surname (either order) with at most :data:`NAME_WINDOW`
    characters between them: "Gareth Halfield", "HALFIELD, Gareth", a CSV's adjacent cells, or
    a JSON record's ``"first_name": "Gareth", "surname": "Halfield"``."""
    recent: list[tuple[int, int, str]] = []  # (start, end, lower-case word) of names near here
    for m in WORD_RE.finditer(text):
        word = m.group(0).lower()
        is_surname, is_first = word in ids.name_pairs, word in ids.first_name_set
        if not (is_surname or is_first):
            continue
        recent = [r for r in recent if m.start() - r[1] <= NAME_WINDOW]
        for start, _end, other in recent:
            if ids.is_pair(other, word):
                yield start, m.end(), "name_pair"
                break
        recent.append((m.start(), m.end(), word))


def _name_pairs_in_rows(text: str, ids: DeliveryIdentifiers) -> Iterator[tuple[int, int, str]]:
    offset = 0
    for line in text.split("\n"):
        cells = [c.strip().lower() for c in line.split(" | ")]
        surnames = [c for c in cells if c in ids.name_pairs]
        present = set(cells)
        paired = any(ids.name_pairs[s] & present for s in surnames)
        # or a whole name in one cell ("Gareth Halfield")
        if paired or any(
            next(_name_pairs_in_text(c, ids), None) for c in cells if " " in c or "," in c
        ):
            yield offset, offset + len(line), "name_pair"
        offset += len(line) + 1


# --- readers for structured files ---------------------------------------------------------------


def _duckdb_dump(path: Path) -> tuple[str, list[tuple[str, str]]] | None:
    """Every table of a DuckDB file as text rows, and its (table, birth column) pairs with exact
    dates; None if the file cannot be opened read-only."""
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None
    out = io.StringIO()
    exact_birth: list[tuple[str, str]] = []
    try:
        tables = con.execute(
            "SELECT table_catalog, table_schema, table_name FROM information_schema.tables"
        ).fetchall()
        for cat, schema, table in tables:
            qualified = ".".join('"' + p.replace('"', '""') + '"' for p in (cat, schema, table))
            cols = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_catalog = ? AND table_schema = ? AND table_name = ?",
                [cat, schema, table],
            ).fetchall()
            if not cols:
                continue
            select = ", ".join(
                'coalesce(CAST("' + c.replace('"', '""') + "\" AS VARCHAR), '')" for c, _ in cols
            )
            rel = con.execute(f"SELECT concat_ws(' | ', {select}) FROM {qualified}")
            while batch := rel.fetchmany(50_000):
                for (line,) in batch:
                    out.write(line.replace("\n", " "))
                    out.write("\n")
            for c, dtype in cols:
                if _is_birth_column(c) and dtype.upper() in ("DATE", "TIMESTAMP", "VARCHAR"):
                    q = '"' + c.replace('"', '""') + '"'
                    (n_weekdays,) = con.execute(
                        f"SELECT count(DISTINCT dayofweek(TRY_CAST({q} AS DATE))) "
                        f"FROM {qualified} WHERE TRY_CAST({q} AS DATE) IS NOT NULL"
                    ).fetchone() or (0,)
                    if n_weekdays > 1:
                        exact_birth.append((f"{schema}.{table}", c))
    finally:
        con.close()
    return out.getvalue(), exact_birth


def _is_birth_column(name: str) -> bool:
    n = name.lower()
    return ("birth" in n or "dob" in n) and "cohort" not in n and "year" not in n


def _sqlite_dump(path: Path) -> str:
    """Every column of every table of a SQLite database (with its WAL) as text rows."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copy2(path, copy)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                shutil.copy2(side, copy.with_name(copy.name + suffix))
        con = sqlite3.connect(str(copy))
        try:
            out = io.StringIO()
            tables = [
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                q = '"' + table.replace('"', '""') + '"'
                for row in con.execute(f"SELECT * FROM {q}"):
                    cells = [_cell_text(v) for v in row]
                    out.write(" | ".join(c.replace("\n", " ") for c in cells))
                    out.write("\n")
            return out.getvalue()
        finally:
            con.close()


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _parquet_dump(path: Path) -> str | None:
    import duckdb

    try:
        con = duckdb.connect()
        rel = con.execute("SELECT * FROM read_parquet(?)", [str(path)])
    except duckdb.Error:
        return None
    return "\n".join(" | ".join(_cell_text(v) for v in rec) for rec in rel.fetchall())


def _csv_exact_birth_columns(text: str) -> list[str]:
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
    except (csv.Error, StopIteration):
        return []
    idx = [i for i, h in enumerate(header) if _is_birth_column(h)]
    if not idx:
        return []
    weekdays: dict[int, set[int]] = {i: set() for i in idx}
    for row in reader:
        for i in idx:
            if i < len(row) and (d := _parse_date(row[i])) is not None:
                weekdays[i].add(d.weekday())
    return [header[i] for i in idx if len(weekdays[i]) > 1]


# --- small counts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DisclosureRule:
    threshold: int = 10
    rounding: int = 5

    @classmethod
    def of_run(cls, run: Path) -> DisclosureRule:
        path = run / "results" / "model_settings.yaml"
        if not path.exists():
            return cls()
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        block = settings.get("disclosure") or {}
        return cls(int(block.get("threshold", 10)), int(block.get("rounding", 5)))

    def problem(self, count: int) -> str | None:
        if 0 < count < self.threshold:
            return "small_count"
        if self.rounding > 1 and count % self.rounding:
            return "unrounded_count"
        return None


COUNT_CELL_RE = re.compile(r"^\s*([0-9][0-9,]*)(?:\.0+)?\s*\+?\s*$")


def _norm_header(h: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", h.strip().lower()).strip("_")


def is_count_column(header: str) -> bool:
    h = _norm_header(header)
    if h in COUNT_COLUMNS:
        return True
    return bool(COUNT_COLUMN_PATTERN.match(h)) and not h.startswith(("pct", "ess", "weighted"))


def _count_value(cell: str) -> int | None:
    m = COUNT_CELL_RE.match(html.unescape(cell))
    return int(m.group(1).replace(",", "")) if m else None


def check_table(
    header: list[str], rows: Iterable[list[str]], where: str, rule: DisclosureRule
) -> list[Finding]:
    """Count findings in one table (a header and its rows of cell text)."""
    findings = []
    count_idx = [i for i, h in enumerate(header) if is_count_column(h)]
    norm = [_norm_header(h) for h in header]
    kv = ("item" in norm and "value" in norm) and (norm.index("item"), norm.index("value"))
    for row in rows:
        checks = [(header[i], row[i]) for i in count_idx if i < len(row)]
        if kv and max(kv) < len(row) and is_count_column(row[kv[0]]):
            checks.append((row[kv[0]], row[kv[1]]))
        for col, cell in checks:
            value = _count_value(cell)
            kind = rule.problem(value) if value is not None else None
            if kind:
                label = " ".join(c.strip() for c in row[:2])[:60]
                findings.append(Finding(where, kind, f"{col} = {value} (row: {label})"))
    return findings


_NUM = r"([0-9][0-9,]*)"
COUNT_TEXT_RES = (
    re.compile(rf"(?<![0-9.,\-]){_NUM}\s+(?:{'|'.join(COUNT_NOUNS)})\b", re.IGNORECASE),
    re.compile(rf"\b(?:{'|'.join(COUNT_WORDS)})\s*[=:]?\s*{_NUM}(?![0-9.%])", re.IGNORECASE),
)
# phrases that state the rule rather than a count ("fewer than 10 children")
RULE_PHRASE_RE = re.compile(
    r"\b(fewer than|less than|at least|more than|from|to|nearest)\s*$", re.I
)


def check_text(text: str, where: str, rule: DisclosureRule) -> list[Finding]:
    """Count findings in prose: a number before a count noun or after a count word."""
    findings = []
    seen: set[int] = set()  # "excluded 1 child" is one count, matched by both patterns
    for rx in COUNT_TEXT_RES:
        for m in rx.finditer(text):
            if m.start(1) in seen or RULE_PHRASE_RE.search(
                text[max(0, m.start() - 15) : m.start()]
            ):
                continue
            seen.add(m.start(1))
            value = int(m.group(1).replace(",", ""))
            kind = rule.problem(value)
            if kind:
                # the prose around a count may hold anything: other digits are masked
                left = re.sub(r"[0-9]", "#", text[max(0, m.start(1) - 40) : m.start(1)])
                right = re.sub(r"[0-9]", "#", text[m.end(1) : m.end() + 10])
                ctx = " ".join((left + m.group(1) + right).split())
                findings.append(Finding(where, kind, ctx))
    return findings


def markdown_tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every pipe table in a markdown text."""
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        head, sep = lines[i].strip(), lines[i + 1].strip()
        if head.startswith("|") and re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*\|?", sep):
            header = _md_cells(head)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_md_cells(lines[i].strip()))
                i += 1
            yield header, rows
        else:
            i += 1


def _md_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_prose(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("|"))


class _HtmlTables(HTMLParser):
    """Tables (header, rows) and the text outside tables of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self.prose: list[str] = []
        self._depth = 0
        self._skip = 0
        self._rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "table":
            self._depth += 1
            if self._depth == 1:
                self._rows = []
        elif tag == "tr" and self._depth == 1:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._rows.append(self._row)
            self._row = None
        elif tag == "table" and self._depth:
            self._depth -= 1
            if self._depth == 0 and self._rows:
                self.tables.append((self._rows[0], self._rows[1:]))
        elif tag in ("p", "li", "div", "h1", "h2", "h3", "h4", "br") and not self._depth:
            self.prose.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._cell is not None:
            self._cell.append(data)
        elif not self._depth:
            self.prose.append(data)


def check_html(text: str, where: str, rule: DisclosureRule) -> list[Finding]:
    parser = _HtmlTables()
    parser.feed(text)
    parser.close()
    if parser._depth and parser._rows:  # a table left open at the end of the page
        parser.tables.append((parser._rows[0], parser._rows[1:]))
    findings = []
    for header, rows in parser.tables:
        findings += check_table(header, rows, where, rule)
    return findings + check_text("".join(parser.prose), where, rule)


def check_csv(text: str, where: str, rule: DisclosureRule) -> list[Finding]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    return check_table(rows[0], rows[1:], where, rule) + check_suppressed_empty(
        rows[0], rows[1:], where
    )


def check_suppressed_empty(header: list[str], rows: list[list[str]], where: str) -> list[Finding]:
    """The release CSV format names a row's suppressed (or withheld) cells in its
    ``suppressed`` column and leaves them empty: a named cell that holds a value is a
    ``suppressed_shown`` finding, and so is a name that is not a column."""
    if "suppressed" not in header:
        return []
    at = {h: i for i, h in enumerate(header)}
    findings = []
    for row in rows:
        named = row[at["suppressed"]].split() if at["suppressed"] < len(row) else []
        for col in named:
            if col not in at or (at[col] < len(row) and row[at[col]].strip()):
                label = " ".join(c.strip() for c in row[:2])[:60]
                findings.append(Finding(where, "suppressed_shown", f"{col} (row: {label})"))
    return findings


def check_artifact_data(data: str, where: str, rule: DisclosureRule) -> list[Finding]:
    """A Prefect artifact's ``data`` (JSON: markdown text, a table, a number or a link)."""
    try:
        value = json.loads(data)
    except (TypeError, json.JSONDecodeError):
        value = data
    if isinstance(value, str):
        try:  # table artifacts store their rows as a JSON string
            inner = json.loads(value)
            value = inner if isinstance(inner, list | dict) else value
        except json.JSONDecodeError:
            pass
    findings: list[Finding] = []
    if isinstance(value, str):
        for header, rows in markdown_tables(value):
            findings += check_table(header, rows, where, rule)
        findings += check_text(markdown_prose(value), where, rule)
    elif isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        header = list(value[0])
        findings += check_table(
            header, [[str(r.get(h, "")) for h in header] for r in value], where, rule
        )
    elif isinstance(value, dict):
        header = list(value)
        cols = [v if isinstance(v, list) else [v] for v in value.values()]
        rows = [[str(c[i]) if i < len(c) else "" for c in cols] for i in range(max(map(len, cols)))]
        findings += check_table(header, rows, where, rule)
    return findings


def prefect_published(prefect_home: Path) -> Iterator[tuple[str, str, str]]:
    """(kind, where, text) of every artifact ``data`` and log message in Prefect's database."""
    db = prefect_home / "prefect.db"
    if not db.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / db.name
        for suffix in ("", "-wal", "-shm"):
            side = db.with_name(db.name + suffix)
            if side.exists():
                shutil.copy2(side, copy.with_name(copy.name + suffix))
        con = sqlite3.connect(str(copy))
        try:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "artifact" in tables:
                for key, data in con.execute("SELECT key, data FROM artifact"):
                    yield "artifact", f"PREFECT_HOME/prefect.db artifact {key}", _cell_text(data)
            if "log" in tables:
                for name, message in con.execute("SELECT name, message FROM log"):
                    yield "log", f"PREFECT_HOME/prefect.db log {name}", _cell_text(message)
        finally:
            con.close()


def scan_small_counts(run: Path, prefect_home: Path | None) -> list[Finding]:
    """Count findings in everything a run publishes."""
    rule = DisclosureRule.of_run(run)
    findings: list[Finding] = []
    release = run / "release"
    for path in sorted(release.glob("*")) if release.is_dir() else []:
        where = f"RUN/release/{path.name}"
        if path.suffix == ".csv":
            findings += check_csv(path.read_text(encoding="utf-8", errors="replace"), where, rule)
        elif path.suffix in (".txt", ".md"):
            findings += check_text(path.read_text(encoding="utf-8", errors="replace"), where, rule)
    report = run / "report.html"
    if report.exists():
        findings += check_html(
            report.read_text(encoding="utf-8", errors="replace"), "RUN/report.html", rule
        )
    if prefect_home is not None:
        for kind, where, text in prefect_published(prefect_home):
            if kind == "artifact":
                findings += check_artifact_data(text, where, rule)
            else:
                findings += check_text(text, where, rule)
    return findings


# --- remote requests ----------------------------------------------------------------------------

URL_RE = re.compile(r"https?://[^\s\"'<>()\\]+", re.IGNORECASE)


def remote_references(text: str, label: str) -> list[Finding]:
    return [
        Finding(label, "remote_request", m.group(0)[:100])
        for m in URL_RE.finditer(text)
        if not m.group(0).startswith(NAMESPACE_URI_PREFIXES)
    ]


# --- the whole scan -----------------------------------------------------------------------------


def in_linkage_zone(path: Path, run: Path) -> bool:
    try:
        rel = path.relative_to(run)
    except ValueError:
        return False
    return any(rel == Path(z) or Path(z) in rel.parents for z in LINKAGE_ZONE)


def files_written(
    run: Path, prefect_home: Path | None, temp_dir: Path | None = None
) -> Iterator[tuple[Path, str]]:
    """(path, label) of every file under the run folder (linkage zone excepted), the Prefect home
    and the temporary folder the run was given (``TMPDIR``), if any."""
    roots = [(run, "RUN"), (prefect_home, "PREFECT_HOME"), (temp_dir, "TMPDIR")]
    for root, name in roots:
        if root is None or not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and not in_linkage_zone(path, run):
                yield path, f"{name}/{path.relative_to(root).as_posix()}"


def scan_file(path: Path, label: str, ids: DeliveryIdentifiers, report: ScanReport) -> None:
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    suffix = path.suffix.lower()
    media = suffix in MEDIA_SUFFIXES
    report.findings += scan_text_for_identifiers(text, label, ids, names=not media)
    if suffix in WEB_SUFFIXES:
        report.findings += remote_references(text, label)
    if media:
        report.notes.append(
            f"{label}: image or font: raw bytes scanned for numbers and postcodes only (pixel data"
            " is compressed; text drawn into a figure cannot be read back)"
        )
    elif suffix == ".csv":
        for col in _csv_exact_birth_columns(text):
            report.findings.append(
                Finding(label, "date_of_birth", f"column {col} holds exact dates")
            )
    elif suffix == ".gz":
        try:
            inner = gzip.decompress(data).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            report.notes.append(f"{label}: not readable as gzip; raw bytes only")
        else:
            report.findings += scan_text_for_identifiers(inner, label + " (gunzipped)", ids)
    elif suffix == ".parquet":
        dump = _parquet_dump(path)
        if dump is None:
            report.notes.append(f"{label}: Parquet not readable; raw bytes only")
        else:
            report.findings += scan_text_for_identifiers(dump, label + " (rows)", ids, rows=True)
    if data[:16] == b"SQLite format 3\x00":
        dump_text = _sqlite_dump(path)
        report.findings += scan_text_for_identifiers(dump_text, label + " (rows)", ids, rows=True)
    elif data[8:12] == b"DUCK":
        result = _duckdb_dump(path)
        if result is None:
            report.notes.append(f"{label}: DuckDB file not openable read-only; raw bytes only")
        else:
            dump_text, exact_birth = result
            report.findings += scan_text_for_identifiers(
                dump_text, label + " (rows)", ids, rows=True
            )
            for table, col in exact_birth:
                report.findings.append(
                    Finding(label, "date_of_birth", f"{table}.{col} holds exact dates")
                )


def scan_identifiers(
    run: Path,
    delivery: Path | DeliveryIdentifiers,
    prefect_home: Path | None,
    temp_dir: Path | None = None,
) -> ScanReport:
    """Identifier and remote-request findings in every file written (linkage zone excepted)."""
    ids = (
        delivery
        if isinstance(delivery, DeliveryIdentifiers)
        else DeliveryIdentifiers.from_delivery(delivery)
    )
    report = ScanReport()
    for path, label in files_written(run, prefect_home, temp_dir):
        report.files_scanned.append(label)
        scan_file(path, label, ids, report)
    return report


def scan_run(
    run: Path,
    delivery: Path | DeliveryIdentifiers,
    prefect_home: Path | None = None,
    temp_dir: Path | None = None,
) -> ScanReport:
    """The whole scan: identifiers, remote requests and small counts.

    ``run``: the run folder; ``delivery``: the delivery folder it was made from (or its
    identifiers, read once); ``prefect_home``: the PREFECT_HOME the run used; ``temp_dir``: the
    TMPDIR the run was given, if it was given its own."""
    report = scan_identifiers(run, delivery, prefect_home, temp_dir)
    report.findings += scan_small_counts(run, prefect_home)
    return report


def summary(findings: Iterable[Finding], limit: int = 40) -> str:
    items = list(findings)
    lines = [str(f) for f in items[:limit]]
    if len(items) > limit:
        lines.append(f"... and {len(items) - limit} more")
    return "\n".join(lines)
