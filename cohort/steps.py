"""Named SQL steps and the one runner that executes them (Splink's SQL pipeline is the model).

A :class:`Step` makes one temporary table from one ``SELECT`` statement. Values from the study
config reach the statement as named parameters (``$long_care_days``), never as SQL text; the
statement text is written by the code and may only vary with fixed-choice settings.
:class:`CohortSteps` runs the steps in order on a caller's DuckDB connection and can stop after
any one of them, so a step's table can be inspected (in a test or a notebook) with the tables
before it::

    steps = cohort_steps(load_study_config())
    steps.run(con, stop_after="index_rows")
    con.sql("FROM index_rows LIMIT 5")
    print(steps["index_rows"])        # its SQL alone, with its parameters
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb

from ground.db import quote_ident
from ground.errors import CohortError

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z][a-z0-9_]*")


class UnknownStepError(CohortError):
    """A step name that is not one of the cohort's steps (e.g. a mistyped ``stop_after``)."""


@dataclass(frozen=True)
class Step:
    """One temporary table made by one ``SELECT``.

    ``name`` is the table's name (the later steps read it by that name), ``meaning`` says what
    one row of it is, ``sql`` is the statement and ``params`` the values of its named
    parameters (``$name`` in ``sql``; DuckDB refuses a parameter the statement does not use).
    """

    name: str
    meaning: str
    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"step name {self.name!r} is not a lower-case SQL name")

    def create_sql(self) -> str:
        """The statement the runner executes (parameters still as ``$name``)."""
        return f"CREATE OR REPLACE TEMP TABLE {quote_ident(self.name)} AS\n{self.sql.strip()}"

    def run(self, con: duckdb.DuckDBPyConnection) -> None:
        started = time.perf_counter()
        try:
            con.execute(self.create_sql(), dict(self.params))
        except duckdb.Error as exc:
            exc.add_note(f"in cohort step {self.name!r} ({self.meaning})")
            raise
        log.debug("cohort step %s: %.2f s", self.name, time.perf_counter() - started)

    def __str__(self) -> str:
        lines = [f"-- {self.name}: {self.meaning}"]
        lines += [f"-- ${k} = {v!r}" for k, v in self.params.items()]
        return "\n".join(lines) + "\n" + self.create_sql() + ";"


@dataclass(frozen=True)
class CohortSteps:
    """The cohort's steps in the order they run; each reads only tables made before it (or the
    analysis zone)."""

    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for s in self.steps:
            if s.name in seen:
                raise ValueError(f"two cohort steps make the table {s.name!r}")
            seen.add(s.name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise UnknownStepError(self._unknown(name))

    def until(self, name: str) -> list[Step]:
        """The steps up to and including ``name``."""
        if name not in self.names:
            raise UnknownStepError(self._unknown(name))
        return list(self.steps[: self.names.index(name) + 1])

    def run(self, con: duckdb.DuckDBPyConnection, *, stop_after: str | None = None) -> None:
        """Make every step's temporary table on ``con``, in order; with ``stop_after``, stop once
        that step's table is made. Temporary tables live as long as ``con``; a read-only
        connection to a run's analysis zone is enough."""
        for step in self.until(stop_after) if stop_after else self.steps:
            step.run(con)

    def sql(self) -> str:
        """Every step's statement, in order (to read, or to paste into a DuckDB shell after
        setting the parameters)."""
        return "\n\n".join(str(s) for s in self.steps)

    def _unknown(self, name: str) -> str:
        return f"no cohort step makes a table named {name!r}; the steps are: " + ", ".join(
            self.names
        )
