"""Every estimate refitted on the true links (synthetic worlds only).

:func:`refit_on_true_links` writes the analysis zone of ``OUT`` from the world's truth
(``truth/record_person.parquet``: which person every record belongs to) instead of the
linker's clusters, then runs ``build`` and ``model`` there exactly as the run did. The
difference between the run's estimates and these is what linkage error did to them
(benchmarks/linkage_error.py, docs/linkage_error.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl

from cohort import build_cohort
from cohort.config import load_study_config
from ground.errors import RunStateError
from ground.run_layout import RunLayout
from linkage.imputation import load_candidates, true_record_person, write_link_set_zone
from linkage.settings import LinkageSettings
from models import run_models
from models.settings import ModelSettings
from schemas.analyses import Analysis


def refit_on_true_links(
    *,
    run_dir: str | Path,
    truth_dir: str | Path,
    out_dir: str | Path,
    secret: bytes,
    linkage_settings: LinkageSettings | None = None,
    model_settings: ModelSettings | None = None,
    analyses: Sequence[Analysis] | None = None,
) -> pd.DataFrame:
    """The run's estimates table, refitted on the true links (written to ``OUT/results``).
    ``analyses``: the declarations to fit (default: every one of the run's study config)."""
    run, out = RunLayout.at(run_dir), RunLayout.at(out_dir)
    truth_file = Path(truth_dir) / "record_person.parquet"
    if not truth_file.exists():
        raise RunStateError(f"{truth_file} not found: is {truth_dir} a synthetic truth folder?")
    con = duckdb.connect(str(run.linkage_db), read_only=True)
    try:
        records = load_candidates(con).records
    finally:
        con.close()
    rp = true_record_person(records, pl.read_parquet(truth_file), secret)
    write_link_set_zone(run.linkage_db, rp, out, linkage_settings)
    build_cohort(layout=out, config=load_study_config(run.cohort_dir / "study_config.yaml"))
    run_models(layout=out, settings=model_settings, analyses=analyses)
    return pd.read_csv(out.results_dir / "estimates.csv")
