"""The DfE's children in need census rules on Section 47 enquiries, run on a CIN census XML
delivery.

No source contract takes a Section 47 enquiry: the care-and-support contract records the child
protection plan (``child_protection_registered``, ``child_protection_category``,
``child_protection_plan_start``, mapped from the census's ChildProtectionPlans group), and
nothing in the cohort or the models reads the enquiry that led to it. So the census's
``Section47`` groups are read (table format ``cin_section47_xml``: one row per enquiry, with
its child's referral and closure dates) and checked, not mapped: their failures are reported
beside the 903 rules', as queries for the authority.

The rules are the DfE's, under their codes and messages as Social Finance's ``cin_validator``
(the published code of the DfE's CIN census validation rules, on GitHub) states them; that
package is not a dependency (it is not in the package index this project installs from, and it
reads the whole census into pandas), so the three rules below are written again on the rows as
delivered (ISO dates as text):

* 2889: the S47 start date cannot be before the referral date;
* 8615: where the enquiry's initial child protection conference is dated, the enquiry's start
  date must be present (a date) and on or before it;
* 8839: within one CINdetails group, at most one enquiry may be open (no conference date and
  not marked ``ICPCnotRequired``); a group is the child's LAchildID and referral date in one file.

Rules that need the census period (8715, 8740: dates within the census year) or working days
(8675Q) are not run: the synthetic world files each child's episode in every census year it
spans, so the census period is not the enquiry's. Failures name the rule, the source file and
line, never a value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from deliveries.dfe_rules import Row, RuleFailure
from deliveries.mapping import Layout
from deliveries.readers import read_cin_census_xml

TABLE = "Section47"
NOT_REQUIRED = frozenset({"true", "1"})  # xs:boolean's true


def _iso(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Section47Rule:
    code: str
    message: str
    fields: tuple[str, ...]
    check: Callable[[list[Row]], Iterable[Row]]


def _before_referral(rows: list[Row]) -> Iterable[Row]:
    for r in rows:
        start, referral = _iso(r.get("S47ActualStartDate")), _iso(r.get("CINreferralDate"))
        if start is not None and referral is not None and start < referral:
            yield r


def _after_conference(rows: list[Row]) -> Iterable[Row]:
    for r in rows:
        if r.get("DateOfInitialCPC") is None:
            continue
        start, conference = _iso(r.get("S47ActualStartDate")), _iso(r.get("DateOfInitialCPC"))
        if start is None or (conference is not None and start > conference):
            yield r


def _two_open(rows: list[Row]) -> Iterable[Row]:
    groups: dict[tuple[str, str | None, str | None], list[Row]] = {}
    for r in rows:
        closed = r.get("DateOfInitialCPC") is not None or (
            (r.get("ICPCnotRequired") or "").lower() in NOT_REQUIRED
        )
        if not closed:
            key = (r.file, r.get("LAchildID"), r.get("CINreferralDate"))
            groups.setdefault(key, []).append(r)
    for group in groups.values():
        if len(group) > 1:
            yield from group


RULES: tuple[Section47Rule, ...] = (
    Section47Rule(
        "2889",
        "The S47 start date cannot be before the referral date.",
        ("S47ActualStartDate", "CINreferralDate"),
        _before_referral,
    ),
    Section47Rule(
        "8615",
        "Section 47 Enquiry Start Date must be present and cannot be later than the date of the "
        "initial Child Protection Conference",
        ("S47ActualStartDate", "DateOfInitialCPC"),
        _after_conference,
    ),
    Section47Rule(
        "8839",
        "Within one CINDetails group there are 2 or more open S47 Assessments",
        ("DateOfInitialCPC", "ICPCnotRequired"),
        _two_open,
    ),
)


def read_section47(paths: list[Path], layout: Layout, table: str) -> list[Row]:
    """The Section 47 enquiries of the delivered CIN census files, in file and line order."""
    rows: list[Row] = []
    for path in paths:
        for r in read_cin_census_xml(path, layout.tables[table], unit=TABLE):
            values = {k: (v if isinstance(v, str) else None) for k, v in r.values.items()}
            rows.append(Row(path.name, r.line, values))
    return rows


def run_section47_rules(
    tables: dict[str, list[Path]], layout: Layout, *, section47: str
) -> tuple[int, list[RuleFailure]]:
    """The number of enquiries read and every failure of :data:`RULES` on them (the layout's
    table named ``section47``), in rule order then file and line."""
    rows = read_section47(tables[section47], layout, section47)
    failures = []
    for rule in RULES:
        hits = sorted(
            {(r.file, r.line): r for r in rule.check(rows)}.values(),
            key=lambda r: (r.file, r.line),
        )
        failures += [
            RuleFailure(rule.code, rule.message, TABLE, " ".join(rule.fields), r.file, r.line)
            for r in hits
        ]
    return len(rows), failures
