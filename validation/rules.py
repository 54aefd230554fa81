"""Row rules generated from the contracts, as DuckDB SQL (pure functions; executed elsewhere).

Every rule yields a reason string ``<column>:<rule>`` (or ``rule:<name>`` for cross-field rules)
when a row breaks it. A row with any reason is quarantined with all of them.

Cleaning rules applied while typing (counted in the report):

* dates accepted as ``YYYY-MM-DD``, ``DD/MM/YYYY`` (UK order) or ``YYYYMMDD`` and normalised to
  DATE; the placeholder date 1900-01-01 in any of these forms, a date before it (year 1, 1850)
  and a date after the latest plausible date (the day of the run unless set) break a rule and are
  NULL in the typed value;
* surrounding whitespace trimmed, empty strings are NULL, postcodes upper-cased;
* exact duplicate rows collapsed (the later copies are quarantined as ``duplicate_row``).
"""

from __future__ import annotations

import re
from datetime import date

from schemas.contracts import Column, SourceContract, load_codelist

PLACEHOLDER_DATE = "1900-01-01"  # what systems write for "unknown"; earlier dates are implausible
DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%Y%m%d")


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    """A SQL string literal for a trusted constant from the contracts (never user data)."""
    return "'" + value.replace("'", "''") + "'"


def clean_text(col: Column) -> str:
    expr = f"NULLIF(TRIM({q(col.name)}), '')"
    if col.name == "postcode":
        expr = f"UPPER({expr})"
    return expr


def parse_date(text: str) -> str:
    """SQL parsing date text in any accepted format, whatever the date (NULL if none fits)."""
    tries = ", ".join(f"TRY_STRPTIME({text}, {lit(f)})" for f in DATE_FORMATS)
    return f"CAST(COALESCE({tries}) AS DATE)"


def date_lit(day: date) -> str:
    """A SQL DATE literal rendered from a ``datetime.date`` (never from text)."""
    return f"DATE '{date.isoformat(day)}'"


def typed_expr(col: Column, text: str | None = None, *, latest_date: date | None = None) -> str:
    """SQL turning the raw text of ``col`` into its contract type (NULL if it cannot).

    ``text``: an expression already holding ``clean_text(col)`` (default: compute it). Dates:
    the parsed date when it is plausible (after the placeholder 1900-01-01 and not after
    ``latest_date``), else NULL."""
    text = text or clean_text(col)
    if col.dtype == "date":
        return plausible_date(parse_date(text), latest_date)
    if col.dtype == "int":
        return f"TRY_CAST({text} AS BIGINT)"
    if col.dtype == "float":
        return f"TRY_CAST({text} AS DOUBLE)"
    if col.dtype == "bool":
        return f"CASE {text} WHEN '1' THEN TRUE WHEN '0' THEN FALSE END"
    return text


def plausible_date(parsed: str, latest_date: date | None) -> str:
    """SQL keeping a parsed date only when it is plausible (see :func:`typed_expr`)."""
    latest = f" AND {parsed} <= {date_lit(latest_date)}" if latest_date else ""
    return f"CASE WHEN {parsed} > {date_lit(date.fromisoformat(PLACEHOLDER_DATE))}{latest} THEN {parsed} END"


def column_checks(
    col: Column,
    text: str | None = None,
    typed: str | None = None,
    *,
    parsed: str | None = None,
    latest_date: date | None = None,
    nul_bytes: bool = True,
) -> list[tuple[str, str]]:
    """(reason, SQL condition true when the row breaks the rule) for one column.

    ``text`` / ``typed`` / ``parsed``: expressions already holding the cleaned text, the typed
    value and (dates) the parsed date before the plausibility check (default: compute them
    inline). ``latest_date``: dates after it are ``future_date``. ``nul_bytes``: check for NUL
    bytes (skipped when the file is known to hold none)."""
    text = text or clean_text(col)
    typed = typed or typed_expr(col, text, latest_date=latest_date)
    checks: list[tuple[str, str]] = []
    if nul_bytes:
        checks.append(("nul_byte", f"contains({text}, chr(0))"))
    if col.dtype == "date":
        parsed = parsed or parse_date(text)
        placeholder = date_lit(date.fromisoformat(PLACEHOLDER_DATE))
        checks.append(("placeholder_date", f"{parsed} = {placeholder}"))
        checks.append(("implausible_date", f"{parsed} < {placeholder}"))
        if latest_date is not None:
            checks.append(("future_date", f"{parsed} > {date_lit(latest_date)}"))
        checks.append(("unparseable_date", f"{text} IS NOT NULL AND {parsed} IS NULL"))
        if not col.nullable:
            checks.append(("missing", f"{text} IS NULL"))
    else:
        if not col.nullable:
            checks.append(("missing", f"{text} IS NULL"))
        if col.dtype in ("int", "float", "bool"):
            checks.append((f"not_{col.dtype}", f"{text} IS NOT NULL AND {typed} IS NULL"))
    if col.pattern:
        checks.append(
            ("pattern", f"{text} IS NOT NULL AND NOT regexp_full_match({text}, {lit(col.pattern)})")
        )
    if col.codelist:
        codes = ", ".join(lit(c) for c in sorted(load_codelist(col.codelist)))
        checks.append(("code_outside_list", f"{text} IS NOT NULL AND {text} NOT IN ({codes})"))
    if col.min_value is not None:
        checks.append(("out_of_range", f"{typed} < {col.min_value}"))
    if col.max_value is not None:
        checks.append(("out_of_range", f"{typed} > {col.max_value}"))
    return checks


def checked_select_sql(
    contract: SourceContract,
    raw_table: str,
    *,
    latest_date: date | None = None,
    nul_bytes: bool = True,
) -> str:
    """SELECT typed columns, raw text (``__raw_<col>``) and ``_reasons`` over a raw table.

    ``latest_date``: dates after it break ``future_date``; ``nul_bytes``: check every column for
    NUL bytes (the caller may skip it for a file it scanned and found without any)."""
    names = contract.column_names
    # each column is trimmed once (__s_), dates parsed once (__p_), typed once (__t_); the checks
    # refer to all three
    clean_cols = ", ".join(f"{clean_text(c)} AS {q('__s_' + c.name)}" for c in contract.columns)
    parsed_cols = "".join(
        f", {parse_date(q('__s_' + c.name))} AS {q('__p_' + c.name)}"
        for c in contract.columns
        if c.dtype == "date"
    )
    typed_cols = ", ".join(
        (
            plausible_date(q("__p_" + c.name), latest_date)
            if c.dtype == "date"
            else typed_expr(c, q("__s_" + c.name))
        )
        + f" AS {q('__t_' + c.name)}"
        for c in contract.columns
    )
    checks = [
        (cond, c.name + ":" + reason)
        for c in contract.columns
        for reason, cond in column_checks(
            c,
            q("__s_" + c.name),
            q("__t_" + c.name),
            parsed=q("__p_" + c.name),
            latest_date=latest_date,
            nul_bytes=nul_bytes,
        )
    ]
    for r in contract.rules:
        sql = r.sql
        for c in sorted(names, key=len, reverse=True):
            sql = re.sub(rf"(?<![A-Za-z0-9_]){re.escape(c)}(?![A-Za-z0-9_])", q("__t_" + c), sql)
        checks.append((f"NOT COALESCE(({sql}), TRUE)", "rule:" + r.name))
    raw_cols = ", ".join(q(c) for c in names)
    out_typed = ", ".join(f"{q('__t_' + c)} AS {q(c)}" for c in names)
    out_raw = ", ".join(f"{q(c)} AS {q('__raw_' + c)}" for c in names)
    # the list of broken rules is built only for rows that break one (a few in a thousand):
    # building a list per row for ten million rows costs more than all the checks together
    any_broken = " OR ".join(f"COALESCE(({cond}), FALSE)" for cond, _ in checks) or "FALSE"
    items = ", ".join(f"CASE WHEN {cond} THEN {lit(label)} END" for cond, label in checks)
    reasons = (
        f"CASE WHEN {any_broken} THEN list_filter([{items}], lambda x: x IS NOT NULL) "
        "ELSE [] END::VARCHAR[]"
        if checks
        else "[]::VARCHAR[]"
    )
    return f"""
WITH cleaned AS (
    SELECT _row_number, _delivery, {raw_cols}, {clean_cols} FROM {raw_table}
), parsed AS (
    SELECT *{parsed_cols} FROM cleaned
), typed AS (
    SELECT *, {typed_cols} FROM parsed
)
SELECT _row_number, _delivery, {out_typed}, {out_raw},
       {reasons} AS _reasons
FROM typed
"""
