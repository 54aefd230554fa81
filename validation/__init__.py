"""Validation stage: contracts -> row rules (DuckDB) + Great Expectations suites -> staging."""

from validation.core import ValidationSummary, validate_delivery
from validation.settings import SourceResult, TableCheck, ValidationSettings

__all__ = [
    "SourceResult",
    "TableCheck",
    "ValidationSettings",
    "ValidationSummary",
    "validate_delivery",
]
