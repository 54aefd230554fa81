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


def typed_expr(col: Column) -> str:
    """SQL turning the raw text of ``col`` into its contract type (NULL if it cannot)."""
    text = clean_text(col)
    if col.dtype == "date":
        return f"CASE WHEN {text} = {lit(PLACEHOLDER_DATE)} THEN NULL ELSE {parse_date(text)} END"
    if col.dtype == "int":
        return f"TRY_CAST({text} AS BIGINT)"
    if col.dtype == "float":
        return f"TRY_CAST({text} AS DOUBLE)"
    if col.dtype == "bool":
        return f"CASE {text} WHEN '1' THEN TRUE WHEN '0' THEN FALSE END"
    return text


def column_checks(col: Column) -> list[tuple[str, str]]:
    """(reason, SQL condition true when the row breaks the rule) for one column."""
    text = clean_text(col)
    typed = typed_expr(col)
    checks: list[tuple[str, str]] = []
    if col.dtype == "date":
        checks.append(("placeholder_date", f"{text} = {lit(PLACEHOLDER_DATE)}"))
        checks.append(
            (
                "unparseable_date",
                f"{text} IS NOT NULL AND {text} <> {lit(PLACEHOLDER_DATE)} "
                f"AND {parse_date(text)} IS NULL",
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
    typed_cols = ", ".join(f"{typed_expr(c)} AS {q('__t_' + c.name)}" for c in contract.columns)
    row_items = [
        f"CASE WHEN {cond} THEN {lit(c.name + ':' + reason)} END"
        for c in contract.columns
        for reason, cond in column_checks(c)
    ]
    cross_items = []
    for r in contract.rules:
        sql = r.sql
        for c in sorted(names, key=len, reverse=True):
            sql = re.sub(rf"(?<![A-Za-z0-9_]){re.escape(c)}(?![A-Za-z0-9_])", q("__t_" + c), sql)
        cross_items.append(
            f"CASE WHEN NOT COALESCE(({sql}), TRUE) THEN {lit('rule:' + r.name)} END"
        )
    raw_cols = ", ".join(q(c) for c in names)
    out_typed = ", ".join(f"{q('__t_' + c)} AS {q(c)}" for c in names)
    out_raw = ", ".join(f"{q(c)} AS {q('__raw_' + c)}" for c in names)
    items = ", ".join(row_items + cross_items) or "NULL"
    return f"""
WITH typed AS (
    SELECT _row_number, _delivery, {raw_cols}, {typed_cols} FROM {raw_table}
)
SELECT _row_number, _delivery, {out_typed}, {out_raw},
       list_filter([{items}], lambda x: x IS NOT NULL)::VARCHAR[] AS _reasons
FROM typed
"""
