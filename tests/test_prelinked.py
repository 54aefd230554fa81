"""Pre-linked mode (issue #23 item 4): extracts already linked by the data provider, as in SAIL,
each row with the provider's pseudonymous person id and match quality and no identifier.

- the contract variant carries no identifier column;
- an identifier column in a pre-linked delivery stops validation with one line naming the column
  (never a value), exit 2, nothing written;
- on the session's world rewritten as pre-linked (person ids from the truth), the run's
  estimates are those of the session run refitted on perfect linkage (the truth's record-to-
  person map), and the provider's match percentage is the link quality the high-quality-links
  flag reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pytest

from cohort import build_cohort
from cohort.config import load_study_config
from ground.run_layout import RunLayout
from linkage.pipeline import link_run, write_analysis_zone
from linkage.pseudonym import pseudonymise
from linkage.settings import LinkageSettings
from models import run_models
from schemas.contracts import PRELINKED_REMOVED, PRELINKED_SOURCES, SOURCES
from synthetic_data.layouts import write_prelinked
from tests.e2e import SECRET, _cohort, _env
from validation import validate_delivery

SEED = 13  # the session world's seed (tests/e2e.py)


def _prelinked_copy(world: Path, out: Path) -> Path:
    """The session's world, rewritten as a pre-linked delivery."""
    shutil.copytree(world, out)
    write_prelinked(out, SEED)
    return out


def test_the_prelinked_contracts_carry_no_identifier() -> None:
    for name, contract in PRELINKED_SOURCES.items():
        assert not set(contract.column_names) & set(PRELINKED_REMOVED), name
        assert {"person_pseudonym", "link_status", "match_percentage"} <= set(contract.column_names)
        assert ("week_of_birth" in contract.column_names) == (
            "date_of_birth" in SOURCES[name].column_names
        )


def test_an_identifier_column_in_a_prelinked_delivery_is_a_one_line_error(
    world: Path, tmp_path: Path
) -> None:
    data = _prelinked_copy(world, tmp_path / "delivery")
    episodes = pl.read_csv(data / "looked_after_episodes.csv", infer_schema=False)
    nhs = "9434765919"  # a value that must never be shown
    episodes.with_columns(NHS_Number=pl.lit(nhs)).write_csv(data / "looked_after_episodes.csv")
    out = tmp_path / "run"
    r = _cohort("validate", "--data", str(data), "--out", str(out), env=_env(tmp_path))
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "NHS_Number" in lines[0] and "looked_after_episodes.csv" in lines[0]
    assert "pre-linked" in lines[0] and "nothing was written" in lines[0]
    assert nhs not in r.stderr + r.stdout
    assert not RunLayout.at(out).linkage_db.exists()
    assert not any(p.is_file() for p in out.rglob("*")) if out.exists() else True


def _perfect_linkage_estimates(full_run: Path, truth: Path, out: Path) -> pd.DataFrame:
    """The session run refitted on the true links: its staged extracts, each record's person
    from the truth (``truth/record_person.parquet``), then the analysis zone, cohort and models
    exactly as the run did."""
    layout = RunLayout.at(out)
    layout.ensure()
    shutil.copy(RunLayout.at(full_run).linkage_db, layout.linkage_db)
    owners = pl.read_parquet(truth / "record_person.parquet").with_columns(
        person_id=pl.col("person_id").cast(pl.String)
    )
    ids = owners["person_id"].unique().sort()
    keys = pl.DataFrame({"person_id": ids, "person_key": pseudonymise(ids.to_list(), b"truth")})
    con = duckdb.connect(str(layout.linkage_db))
    try:
        staged = " UNION ALL ".join(
            f"SELECT '{n}' AS source, record_id FROM staging.{n}" for n in SOURCES
        )
        con.register("owners", owners)
        con.register("keys_frame", keys)
        con.execute(
            f"""CREATE OR REPLACE TABLE linkage.record_person AS
            SELECT s.source, s.record_id, o.person_id, k.person_key,
                   CAST(NULL AS BIGINT) AS component_id, 'truth' AS link_method,
                   1.0 AS match_probability
            FROM ({staged}) s JOIN owners o USING (source, record_id)
            JOIN keys_frame k USING (person_id)"""
        )
        unowned = con.execute(
            f"SELECT count(*) FROM ({staged}) s ANTI JOIN owners o USING (source, record_id)"
        ).fetchone()
        assert unowned == (0,)
        write_analysis_zone(con, layout, LinkageSettings())
    finally:
        con.close()
    config = load_study_config(RunLayout.at(full_run).cohort_dir / "study_config.yaml")
    build_cohort(layout=layout, config=config)
    run_models(layout=layout)
    return pd.read_csv(layout.results_dir / "estimates.csv")


def _prelinked_estimates(data: Path, full_run: Path, out: Path) -> pd.DataFrame:
    """Validation, linkage (the provider path), cohort and models on a pre-linked delivery."""
    layout = RunLayout.at(out)
    validate_delivery(data_dir=data, layout=layout)
    link_run(layout=layout, secret=SECRET.encode())
    config = load_study_config(RunLayout.at(full_run).cohort_dir / "study_config.yaml")
    build_cohort(layout=layout, config=config)
    run_models(layout=layout)
    return pd.read_csv(layout.results_dir / "estimates.csv")


def assert_same_estimates(want: pd.DataFrame, got: pd.DataFrame) -> None:
    """The estimates of perfect linkage (``want``) reproduced by the pre-linked run (``got``)."""
    key = ["outcome", "contrast", "method", "scale"]
    both = want.merge(got, on=key, suffixes=("_perfect", "_prelinked"), validate="1:1")
    assert len(both) == len(want) > 40
    # the same children, the same records, the same persons: the same counts and estimates
    for col in ("n_exposed", "n_unexposed", "events_exposed", "events_unexposed"):
        pd.testing.assert_series_equal(
            both[f"{col}_prelinked"], both[f"{col}_perfect"], check_names=False
        )
    # ... except where the model is not identified at 2,500 children (logistic quasi-separation:
    # no maximum-likelihood fit, a ridge-penalised one instead; a Cox model with no event in a
    # group, whose Newton steps did not converge): the optimiser then stops at a point that
    # moves with the row order, which follows the person keys, and may differ (flagged in the
    # warning column: seed 7, 11 of 55 estimates, of which 9 differ; seed 13, 13 of 55, 10 differ)
    not_identified = "no maximum-likelihood fit|did not converge|no events|not identified"
    well_posed = ~both["warning_perfect"].fillna("").str.contains(not_identified)
    # ... and where the estimate depends on a random split of the children: the DR-learner's
    # cross-fitting folds are drawn over the rows in person-key order, and the two runs' keys
    # differ (as two seeds' splits would; 2,500 children: CATEs moved by up to about 1 SE)
    well_posed &= both["method"] != "dr_learner"
    assert well_posed.sum() > 40
    pd.testing.assert_series_equal(
        both.loc[well_posed, "estimate_prelinked"],
        both.loc[well_posed, "estimate_perfect"],
        check_names=False,
        rtol=1e-6,
    )


@pytest.mark.slow
def test_prelinked_mode_reproduces_the_estimates_of_perfect_linkage(
    world: Path, full_run: Path, tmp_path: Path
) -> None:
    data = _prelinked_copy(world, tmp_path / "delivery")
    got = _prelinked_estimates(data, full_run, tmp_path / "prelinked")
    want = _perfect_linkage_estimates(full_run, world / "truth", tmp_path / "perfect")
    assert_same_estimates(want, got)

    # the provider's quality feeds the high-quality-links sensitivity analyses, which run on a
    # subset (perfect linkage flags everyone high quality: they add nothing there)
    high = got[got["method"].str.endswith("_high_quality_links")]
    assert len(high) > 0
    main = got.assign(n=got["n_exposed"] + got["n_unexposed"]).set_index(["outcome", "contrast"])
    for r in high.itertuples():  # (seed 13: one analysis loses only unexposed children)
        assert (
            r.n_exposed > 0
            and r.n_exposed + r.n_unexposed < main.loc[(r.outcome, r.contrast), "n"].max()
        )

    # the provider's match quality is the link quality: persons with a record under 100%
    # (every record of 5% of persons in the synthetic provider's output) lose the flag
    con = duckdb.connect(str(RunLayout.at(tmp_path / "prelinked").analysis_db), read_only=True)
    try:
        persons = con.sql("SELECT link_quality_min, high_quality_links FROM analysis.persons").pl()
    finally:
        con.close()
    lowered = persons.filter(pl.col("link_quality_min") < 1.0)
    assert 0 < lowered.height < persons.height
    assert lowered["link_quality_min"].min() >= 0.8  # type: ignore[operator]
    threshold = LinkageSettings().high_quality_threshold
    assert (
        persons["high_quality_links"] == (persons["link_quality_min"] >= threshold).cast(pl.Int32)
    ).all()
