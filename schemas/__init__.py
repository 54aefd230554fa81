"""Data contracts: one declaration per source, and versioned code lists."""

from schemas.contracts import (
    SOURCES,
    Column,
    CrossFieldRule,
    SourceContract,
    codelist_version,
    load_codelist,
)

__all__ = [
    "SOURCES",
    "Column",
    "CrossFieldRule",
    "SourceContract",
    "codelist_version",
    "load_codelist",
]
