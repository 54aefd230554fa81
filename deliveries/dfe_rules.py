"""A named subset of the DfE's SSDA903 validation rules, run on a 903-layout delivery.

The DfE's rules are published as code in Social Finance's ``quality-lac-data-validator``
(``lac_validator``; PyPI). It cannot be installed beside this project: every release pins
``pandas<2`` (from 0.2.0 on, ``pandas==1.0.5``), and this project needs ``pandas>=2.2`` (Great
Expectations 1.x, Splink 5). So the rules below are written again here, each under its DfE code
and message, reading the 903 Header and Episodes tables exactly as delivered (codes and
dd/mm/yyyy dates as text, before any recoding). Where the DfE's rule needs last year's return or
the collection year (357's "first episode ever"), this version says what it reads instead.

A failure is reported, not a reason to drop a row: the DfE's errors are queries an authority
answers, and the project's own checks still decide what is staged or quarantined. Failures name
the rule, the table, the source file and line, never a value (CHILD, DOB are identifiers).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from deliveries.mapping import Layout
from deliveries.readers import SourceRow, read_csv

# the DfE's code lists, as in quality-lac-data-validator's rules
RNE_CODES = frozenset({"S", "P", "L", "T", "U", "B"})
LS_CODES = frozenset({"C1", "C2", "D1", "E1", "V2", "V3", "V4", "J1", "J2", "J3", "L1", "L2", "L3"})
PLACE_CODES = frozenset(
    {
        "A3", "A4", "A5", "A6", "H5", "K1", "K2", "P1", "P2", "P3", "R1", "R2", "R3", "R5",
        "S1", "T0", "T1", "T2", "T3", "T4", "U1", "U2", "U3", "U4", "U5", "U6", "Z1",
    }
)  # fmt: skip
REC_CODES = frozenset(
    {
        "E11", "E12", "E2", "E3", "E4A", "E4B", "E13", "E41", "E45", "E46", "E47", "E48",
        "E5", "E6", "E7", "E8", "E9", "E14", "E15", "E16", "E17", "X1",
    }
)  # fmt: skip
SEX_CODES = frozenset({"1", "2"})


@dataclass(frozen=True)
class Row:
    """A delivered row: its file, line and values (text)."""

    file: str
    line: int
    values: dict[str, str | None]

    def get(self, column: str) -> str | None:
        return self.values.get(column)


@dataclass(frozen=True)
class Rule:
    code: str
    message: str
    table: str  # "Header" or "Episodes"
    fields: tuple[str, ...]
    check: Callable[[list[Row]], Iterable[Row]]


@dataclass(frozen=True)
class RuleFailure:
    code: str
    message: str
    table: str
    fields: str
    source_file: str
    source_line: int


def _uk_date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%d/%m/%Y").date()
    except ValueError:
        return None


def _not_in(column: str, codes: frozenset[str]) -> Callable[[list[Row]], Iterable[Row]]:
    def check(rows: list[Row]) -> Iterable[Row]:
        return (r for r in rows if r.get(column) is not None and r.get(column) not in codes)

    return check


def _not_a_date(column: str) -> Callable[[list[Row]], Iterable[Row]]:
    def check(rows: list[Row]) -> Iterable[Row]:
        return (r for r in rows if _uk_date(r.get(column)) is None)

    return check


def _by_child(rows: list[Row]) -> dict[tuple[str | None, str | None], list[Row]]:
    """Each child's episodes (by LA and CHILD) in order of start date (unreadable dates
    last)."""
    children: dict[tuple[str | None, str | None], list[Row]] = {}
    for r in rows:
        children.setdefault((r.get("LA"), r.get("CHILD")), []).append(r)
    for eps in children.values():
        eps.sort(key=lambda r: (_uk_date(r.get("DECOM")) or date.max, r.line))
    return children


def _previous_not_ended(rows: list[Row]) -> Iterable[Row]:
    """142: an episode followed by another of the same child has no end date."""
    for eps in _by_child(rows).values():
        yield from (r for r in eps[:-1] if r.get("DEC") is None)


def _started_before_previous_ended(rows: list[Row]) -> Iterable[Row]:
    """501: an episode starts before the end of the child's previous episode."""
    for eps in _by_child(rows).values():
        for prev, this in itertools.pairwise(eps):
            start, prev_end = _uk_date(this.get("DECOM")), _uk_date(prev.get("DEC"))
            if start is not None and prev_end is not None and start < prev_end:
                yield this


def _first_episode_not_s(rows: list[Row]) -> Iterable[Row]:
    """357: a child's first episode in the delivery must have RNE S (the DfE's rule reads the
    first episode ever, from the collection year; a delivery of several years holds it)."""
    for eps in _by_child(rows).values():
        first = eps[0]
        if _uk_date(first.get("DECOM")) is not None and first.get("RNE") != "S":
            yield first


RULES: tuple[Rule, ...] = (
    Rule("101", "Gender code is not valid.", "Header", ("SEX",), _not_in("SEX", SEX_CODES)),
    Rule("102", "Date of birth is not a valid date.", "Header", ("DOB",), _not_a_date("DOB")),
    Rule(
        "141",
        "Date episode began is not a valid date.",
        "Episodes",
        ("DECOM",),
        _not_a_date("DECOM"),
    ),
    Rule(
        "142",
        "A new episode has started, but the previous episode has not ended.",
        "Episodes",
        ("DEC", "REC"),
        _previous_not_ended,
    ),
    Rule(
        "143",
        "The reason for new episode code is not a valid code.",
        "Episodes",
        ("RNE",),
        _not_in("RNE", RNE_CODES),
    ),
    Rule(
        "144",
        "The legal status code is not a valid code.",
        "Episodes",
        ("LS",),
        _not_in("LS", LS_CODES),
    ),
    Rule(
        "146",
        "Placement type code is not a valid code.",
        "Episodes",
        ("PLACE",),
        _not_in("PLACE", PLACE_CODES),
    ),
    Rule(
        "149",
        "Reason episode ceased code is not valid.",
        "Episodes",
        ("REC",),
        _not_in("REC", REC_CODES),
    ),
    Rule(
        "357",
        "If this is the first episode ever for this child, reason for new episode must be S.",
        "Episodes",
        ("RNE",),
        _first_episode_not_s,
    ),
    Rule(
        "501",
        "A new episode has started before the end date of the previous episode.",
        "Episodes",
        ("DECOM", "DEC"),
        _started_before_previous_ended,
    ),
)


def _read(paths: list[Path], layout: Layout, table: str) -> list[Row]:
    rows: list[Row] = []
    for path in paths:
        for r in read_csv(path, layout.tables[table]):
            rows.append(Row(path.name, r.line, _text(r)))
    return rows


def _text(r: SourceRow) -> dict[str, str | None]:
    return {k: (v if isinstance(v, str) else None) for k, v in r.values.items()}


def run_ssda903_rules(
    tables: dict[str, list[Path]], layout: Layout, *, header: str, episodes: str
) -> list[RuleFailure]:
    """Every failure of :data:`RULES` on the delivery's 903 Header and Episodes tables (the
    layout's table names ``header`` and ``episodes``), in rule order then file and line."""
    rows = {
        "Header": _read(tables[header], layout, header),
        "Episodes": _read(tables[episodes], layout, episodes),
    }
    failures = []
    for rule in RULES:
        hits = sorted(
            {(r.file, r.line): r for r in rule.check(rows[rule.table])}.values(),
            key=lambda r: (r.file, r.line),
        )
        failures += [
            RuleFailure(rule.code, rule.message, rule.table, " ".join(rule.fields), r.file, r.line)
            for r in hits
        ]
    return failures
