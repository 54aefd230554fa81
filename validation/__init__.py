"""Validation stage: contracts -> row rules (DuckDB) + Great Expectations suites -> staging."""

from validation.core import (
    SourceResult,
    TableCheck,
    ValidationSettings,
    ValidationSummary,
    validate_delivery,
)

__all__ = [
    "SourceResult",
    "TableCheck",
    "ValidationSettings",
    "ValidationSummary",
    "validate_delivery",
]
