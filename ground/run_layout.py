"""Where each stage of a run reads and writes. Every stage takes a :class:`RunLayout`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder ``RUN/``.

    * ``linkage_zone.duckdb``: identifiers, ``staging.*``, ``quarantine.*``, ``linkage.*``.
    * ``analysis_zone.duckdb``: pseudonymous key and content only: ``analysis.*``, ``cohort.*``.
    """

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> RunLayout:
        return cls(Path(root))

    @property
    def linkage_db(self) -> Path:
        return self.root / "linkage_zone.duckdb"

    @property
    def analysis_db(self) -> Path:
        return self.root / "analysis_zone.duckdb"

    @property
    def validation_dir(self) -> Path:
        return self.root / "validation"

    @property
    def linkage_dir(self) -> Path:
        return self.root / "linkage"

    @property
    def cohort_dir(self) -> Path:
        return self.root / "cohort"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    @property
    def figures_dir(self) -> Path:
        return self.root / "results" / "figures"

    @property
    def release_dir(self) -> Path:
        return self.root / "release"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def linkage_scratch_dir(self) -> Path:
        """Scratch folder of the linkage zone (DuckDB spill files of identifier tables; mode
        0700; see :func:`ground.db.linkage_scratch`)."""
        return self.root / "linkage_zone.tmp"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def ensure(self) -> RunLayout:
        for d in (
            self.root,
            self.validation_dir,
            self.linkage_dir,
            self.cohort_dir,
            self.results_dir,
            self.figures_dir,
            self.release_dir,
            self.tmp_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
        return self
