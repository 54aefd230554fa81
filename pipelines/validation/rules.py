"""Row rules generated from the contracts, as DuckDB SQL (pure functions; executed elsewhere).

Every rule yields a reason string ``<column>:<rule>`` (or ``rule:<name>`` for cross-field rules)
when a row breaks it. A row with any reason is quarantined with all of them.

Cleaning rules applied while typing (counted in the report):

* dates accepted as ``YYYY-MM-DD``, ``DD/MM/YYYY`` or ``YYYYMMDD`` and normalised to DATE;
* the placeholder date ``1900-01-01`` becomes NULL (and breaks ``not null`` where required);
* surrounding whitespace trimmed, empty strings are NULL, postcodes upper-cased;
* exact duplicate rows collapsed (the later copies are quarantined as ``duplicate_row``).
"""

from __future__ import annotations

import re

from schemas.contracts import Column, SourceContract, load_codelist

PLACEHOLDER_DATE = "1900-01-01"
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
    tries = ", ".join(f"TRY_STRPTIME({text}, {lit(f)})" for f in DATE_FORMATS)
    return f"CAST(COALESCE({tries}) AS DATE)"


def typed_expr(col: Column, text: str | None = None) -> str:
    """SQL turning the raw text of ``col`` into its contract type (NULL if it cannot).

    ``text``: an expression already holding ``clean_text(col)`` (default: compute it)."""
    text = text or clean_text(col)
    if col.dtype == "date":
        return f"CASE WHEN {text} = {lit(PLACEHOLDER_DATE)} THEN NULL ELSE {parse_date(text)} END"
    if col.dtype == "int":
        return f"TRY_CAST({text} AS BIGINT)"
    if col.dtype == "float":
        return f"TRY_CAST({text} AS DOUBLE)"
    if col.dtype == "bool":
        return f"CASE {text} WHEN '1' THEN TRUE WHEN '0' THEN FALSE END"
    return text


def column_checks(
    col: Column, text: str | None = None, typed: str | None = None
) -> list[tuple[str, str]]:
    """(reason, SQL condition true when the row breaks the rule) for one column.

    ``text`` / ``typed``: expressions already holding the cleaned text and the typed value
    (default: compute them inline)."""
    text = text or clean_text(col)
    typed = typed or typed_expr(col, text)
    checks: list[tuple[str, str]] = []
    if col.dtype == "date":
        checks.append(("placeholder_date", f"{text} = {lit(PLACEHOLDER_DATE)}"))
        checks.append(
            (
                "unparseable_date",
                f"{text} IS NOT NULL AND {text} <> {lit(PLACEHOLDER_DATE)} AND {typed} IS NULL",
            )
        )
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


def checked_select_sql(contract: SourceContract, raw_table: str) -> str:
    """SELECT typed columns, raw text (``__raw_<col>``) and ``_reasons`` over a raw table."""
    names = contract.column_names
    # each column is trimmed once (__s_) and typed once (__t_); the checks refer to both
    clean_cols = ", ".join(f"{clean_text(c)} AS {q('__s_' + c.name)}" for c in contract.columns)
    typed_cols = ", ".join(
        f"{typed_expr(c, q('__s_' + c.name))} AS {q('__t_' + c.name)}" for c in contract.columns
    )
    checks = [
        (cond, c.name + ":" + reason)
        for c in contract.columns
        for reason, cond in column_checks(c, q("__s_" + c.name), q("__t_" + c.name))
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
), typed AS (
    SELECT *, {typed_cols} FROM cleaned
)
SELECT _row_number, _delivery, {out_typed}, {out_raw},
       {reasons} AS _reasons
FROM typed
"""
