"""The data dictionary, rendered from the contracts and code lists only.

Regenerate the committed copy with::

    uv run --locked python -m schemas.dictionary > docs/data_dictionary.md

``tests/test_docs.py`` fails when the committed copy differs from this output.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

from schemas.contracts import (
    CODELIST_DIR,
    SOURCES,
    Column,
    SourceContract,
    codelist_version,
)

__all__ = ["codelist_anchor", "data_dictionary_markdown", "main"]

INLINE_CODES_MAX = 8  # code lists this short are also spelled out in the column table

ROLE_TEXT = {
    "identifier": "**identifier: linkage zone only**",
    "record_id": "record id",
    "content": "content",
}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _codelist_rows(name: str) -> tuple[list[str], list[dict[str, str]]]:
    with (CODELIST_DIR / f"{name}.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _codelist_names() -> list[str]:
    return sorted(p.stem for p in CODELIST_DIR.glob("*.csv"))


def codelist_anchor(name: str) -> str:
    """The GitHub anchor of a code list's heading (``### Code list: <name>``)."""
    return f"code-list-{name}"


def _allowed(col: Column, version: str) -> str:
    parts = []
    if col.codelist:
        header, rows = _codelist_rows(col.codelist)
        key = "code" if "code" in header else header[0]
        text = f"[{col.codelist}](#{codelist_anchor(col.codelist)}) (v{version})"
        if len(rows) <= INLINE_CODES_MAX:
            text += ": " + ", ".join(_code(r[key]) for r in rows)
        else:
            text += f": {len(rows)} codes"
        parts.append(text)
    if col.pattern:
        parts.append("pattern " + _code(col.pattern))
    if col.dtype == "bool":
        parts.append("`0` / `1`")
    if col.dtype == "date":
        parts.append("ISO date `YYYY-MM-DD`")
    return _cell("; ".join(parts))


def _range(col: Column) -> str:
    lo, hi = col.min_value, col.max_value
    if lo is not None and hi is not None:
        return f"{_number(lo)} to {_number(hi)}"
    if lo is not None:
        return f">= {_number(lo)}"
    if hi is not None:
        return f"<= {_number(hi)}"
    return ""


def _role(col: Column) -> str:
    text = ROLE_TEXT[col.role]
    if col.linkage_role:
        text += f" (linkage role {_code(col.linkage_role)})"
    return text


def _source_section(contract: SourceContract, version: str) -> list[str]:
    stem = contract.file_stem
    lines = [
        f"## {contract.name}",
        "",
        contract.description + ".",
        "",
        f"- File: `{stem}.csv` or `{stem}.parquet` in the delivery folder",
        f"- Grain: {contract.grain}",
        f"- Primary key: {', '.join(_code(k) for k in contract.primary_key)}",
        f"- Identifier columns (linkage zone only): "
        f"{', '.join(_code(c) for c in contract.identifier_columns) or 'none'}",
        "",
        "| column | type | nullable | role | allowed values | range | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for col in contract.columns:
        lines.append(
            f"| {_code(col.name)} | {col.dtype} | {'yes' if col.nullable else 'no'} | "
            f"{_role(col)} | {_allowed(col, version)} | {_range(col)} | "
            f"{_cell(col.description)} |"
        )
    lines.append("")
    if contract.rules:
        lines += [
            "Cross-field rules (a row breaks a rule when the condition is false; a missing "
            "operand passes; a broken rule quarantines the row with reason `rule:<name>`):",
            "",
        ]
        lines += [f"- {_code(r.name)}: {r.description} ({_code(r.sql)})" for r in contract.rules]
    else:
        lines.append("Cross-field rules: none.")
    lines.append("")
    return lines


def _codelist_section(name: str, used_by: list[str], version: str) -> list[str]:
    header, rows = _codelist_rows(name)
    lines = [
        f"### Code list: {name}",
        "",
        f"File `schemas/codelists/{name}.csv`, version {version}, {len(rows)} entries. "
        + (
            "Used by " + ", ".join(used_by) + "."
            if used_by
            else "Not referenced by a contract column."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(_cell(r[h] or "") for h in header) + " |" for r in rows]
    lines.append("")
    return lines


def data_dictionary_markdown() -> str:
    """The whole data dictionary as Markdown (deterministic: same contracts, same bytes)."""
    version = codelist_version()
    used_by: dict[str, list[str]] = defaultdict(list)
    for contract in SOURCES.values():
        for col in contract.columns:
            if col.codelist:
                used_by[col.codelist].append(f"`{contract.name}.{col.name}`")
    lines = [
        "# Data dictionary",
        "",
        "<!-- Generated by `uv run --locked python -m schemas.dictionary > "
        "docs/data_dictionary.md`; do not edit by hand. -->",
        "",
        "Generated from the source contracts (`schemas/contracts.py`) and the code lists "
        f"(`schemas/codelists/`, version {version}). The same contracts drive the synthetic "
        "generator, the validation rules and the Great Expectations suites "
        "([validation](validation.md)).",
        "",
        "Conventions of a delivery:",
        "",
        "- one file per source, `<file stem>.csv` (UTF-8, comma-separated, header row) or "
        "`<file stem>.parquet`; every column is delivered as text and cast to its type during "
        "validation;",
        "- dates are ISO `YYYY-MM-DD`; booleans are `0` / `1`; missing values are empty strings "
        "(CSV) or nulls (Parquet);",
        "- **nullable = no** means an empty value quarantines the row (reason `<column>:missing`);",
        "- a value outside its code list, pattern or range quarantines the row (reasons "
        "`<column>:code_outside_list`, `<column>:pattern`, `<column>:out_of_range`).",
        "",
        "Roles:",
        "",
        "- **identifier: linkage zone only**: a personal identifier. It stays in "
        "`linkage_zone.duckdb` (`staging.*`, `quarantine.*`) and is never copied to "
        "`analysis.<source>`; `analysis.persons` carries only the week of birth and the "
        "commonest recorded sex. The linkage role says how linkage uses the column "
        "([linkage](linkage.md));",
        "- record id: the source's own record id, carried into the analysis zone;",
        "- content: everything else; copied to `analysis.<source>` in the analysis zone.",
        "",
        "Sources:",
        "",
    ]
    lines += [
        f"- [{c.name}](#{c.name}): {c.description} ({len(c.columns)} columns)"
        for c in SOURCES.values()
    ]
    lines.append("")
    for contract in SOURCES.values():
        lines += _source_section(contract, version)
    lines += [
        "## Code lists",
        "",
        f"Version {version} (`schemas/codelists/VERSION`). A code outside its list quarantines "
        "the row.",
        "",
    ]
    for name in _codelist_names():
        lines += _codelist_section(name, used_by.get(name, []), version)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(data_dictionary_markdown())


if __name__ == "__main__":
    main()
