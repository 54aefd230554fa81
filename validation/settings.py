"""The validation stage's settings and its per-source result: the types that ``core`` (ingest and
table rules) and ``gx_suites`` (Great Expectations) both use, kept apart so neither imports the
other."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ground.db import MemorySize
from schemas.contracts import SOURCES
from validation.delivery_files import check_encoding

Severity = Literal["error", "warn", "ignore"]


class TableCheck(BaseModel):
    """A table-level check: severity, tolerance and a note (as OHDSI's DQD does)."""

    model_config = ConfigDict(extra="forbid")
    severity: Severity = "error"
    tolerance: float = 0.0
    note: str = ""


class ValidationSettings(BaseModel):
    """Severity and tolerances of the table checks; saved into the run folder."""

    model_config = ConfigDict(extra="forbid")
    extra_columns: TableCheck = TableCheck(note="a column the contract does not declare")
    max_failing_share: TableCheck = TableCheck(
        tolerance=0.05, note="share of rows quarantined above which the delivery is refused"
    )
    min_rows: int = Field(1, ge=0, description="fewer data rows stop the run")
    identifier_completeness: TableCheck = TableCheck(
        severity="warn", tolerance=0.7, note="health-number completeness below this is reported"
    )
    gx_max_rows: int = Field(
        1_000_000, ge=1000, description="rows per source fed to Great Expectations (sampled)"
    )
    run_great_expectations: bool = True
    encodings: dict[str, str] = Field(
        default_factory=dict,
        description="source -> encoding of its CSV when not UTF-8 (a Python codec, e.g. cp1252)",
    )
    latest_plausible_date: date | None = Field(
        None, description="dates after this are quarantined as future_date (null: the run's day)"
    )
    duckdb_memory_limit: MemorySize = Field("6GB", description="DuckDB memory limit for this stage")

    @field_validator("encodings")
    @classmethod
    def _known_sources_and_codecs(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(SOURCES))
        if unknown:
            raise ValueError(
                f"encodings: unknown source(s) {unknown}; sources are {', '.join(SOURCES)}"
            )
        return {source: check_encoding(codec) for source, codec in value.items()}


@dataclass
class SourceResult:
    source: str
    file: str
    rows_read: int
    rows_staged: int
    rows_quarantined: int
    physical_lines: int | None
    file_records: int
    reasons: dict[str, int] = field(default_factory=dict)
    completeness: dict[str, float] = field(default_factory=dict)
    cleaning: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    expectations: list[dict[str, object]] = field(default_factory=list)

    @property
    def conserved(self) -> bool:
        """Every record the file holds was read, and every row read is staged or quarantined.

        ``file_records`` is counted from the file itself (CSV bytes, Parquet footer), not from
        what the reader returned."""
        return self.file_records == self.rows_read == self.rows_staged + self.rows_quarantined
