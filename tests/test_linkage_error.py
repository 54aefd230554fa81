"""Issue #21: differential linkage error in the synthetic world, link draws from match
probabilities, Rubin's rules, and the true-link / drawn-link analysis zones."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest

from ground.errors import ConfigError
from linkage.imputation import (
    CandidateLinks,
    draw_edges,
    load_candidates,
    record_person_for,
    true_record_person,
    write_link_set_zone,
)
from models.pooling import PoolingError, rubin_pool
from synthetic_data.linkage_error import DifferentialNoise, GroupMultipliers, record_rate
from synthetic_data.scenario import Scenario, load_scenario

# ---------------------------------------------------------------- differential noise


def test_differential_rates_multiply_by_group_and_default_returns_the_base_rate() -> None:
    person = np.arange(4)
    first_entry = np.array([-1, 100, 100, -1])
    kw = dict(
        first_entry=first_entry,
        decile=np.array([1, 1, 10, 10]),
        minority=np.array([False, False, False, True]),
        moves=np.zeros(4, np.int64),
    )
    # default: the base rate itself (a float), so default extracts draw exactly as before
    assert record_rate(0.06, "missing_nhs", DifferentialNoise(), person, None, **kw) == 0.06
    diff = DifferentialNoise(
        looked_after=GroupMultipliers(missing_nhs=5.0),
        most_deprived=GroupMultipliers(missing_nhs=2.0),
    )
    when = np.array([50, 50, 200, 200])  # person 1's record predates entry, person 2's follows
    rate = record_rate(0.06, "missing_nhs", diff, person, when, **kw)
    np.testing.assert_allclose(rate, [0.06, 0.06, 0.06 * 5 * 2, 0.06 * 2])
    # capped at 1
    big = DifferentialNoise(looked_after=GroupMultipliers(missing_nhs=50.0))
    assert record_rate(0.5, "missing_nhs", big, person, when, **kw).max() == 1.0


def test_shipped_scenario_loads_and_unknown_group_key_is_named(tmp_path: Path) -> None:
    sc = load_scenario("differential_linkage_error")
    assert sc.noise.differential.looked_after.missing_nhs > 1
    assert Scenario().noise.differential.is_neutral()
    bad = tmp_path / "bad.yaml"
    bad.write_text("noise:\n  differential:\n    looked_after:\n      missing_nsh: 2.0\n")
    with pytest.raises(ConfigError, match="missing_nsh.*allowed keys here: typo"):
        load_scenario(bad)


def test_differential_world_loses_looked_after_childrens_nhs_numbers(tmp_path: Path) -> None:
    from synthetic_data import generate_world

    generate_world(n_children=1500, seed=5, scenario="differential_linkage_error", out_dir=tmp_path)
    truth = tmp_path / "truth"
    noise = pl.read_parquet(truth / "identifier_noise.parquet")
    assert noise.filter(pl.col("noise") == "placement_postcode").height > 0
    rp = pl.read_parquet(truth / "record_person.parquet")
    cla = rp.filter(pl.col("source") == "looked_after_episodes")["person_id"].unique()
    adm = rp.filter(pl.col("source") == "hospital_admissions").with_columns(
        cla=pl.col("person_id").is_in(cla.implode()),
        missing=pl.col("record_id").is_in(
            noise.filter(
                (pl.col("source") == "hospital_admissions") & (pl.col("noise") == "missing_nhs")
            )["record_id"].implode()
        ),
    )
    rate = dict(adm.group_by("cla").agg(pl.col("missing").mean()).iter_rows())
    # looked-after children's admissions (before and after entry) miss the NHS number far
    # more often than the 6% of everyone else (x5 after entry, x2 if most deprived)
    assert rate[False] < 0.10
    assert rate[True] > 2 * rate[False]


# ---------------------------------------------------------------- link draws


def _candidates(edges: list[tuple[int, int, float]], spine: list[bool]) -> CandidateLinks:
    n = len(spine)
    return CandidateLinks(
        records=pl.DataFrame(
            {
                "source": ["population_register" if s else "hospital_admissions" for s in spine],
                "record_id": [f"R{i:03d}" for i in range(n)],
                "component": list(range(n)),
            }
        ),
        edge_a=np.array([e[0] for e in edges], np.int64),
        edge_b=np.array([e[1] for e in edges], np.int64),
        edge_p=np.array([e[2] for e in edges]),
        spine=np.array(spine),
    )


def test_draws_follow_the_match_probabilities_and_link_a_record_group_to_one_person() -> None:
    # component 2 (hospital records) has two register candidates (0 at 0.5, 1 at 0.3);
    # component 3 (hospital) pairs with component 4 (hospital) at 0.8, no constraint there
    c = _candidates([(0, 2, 0.5), (1, 2, 0.3), (3, 4, 0.8)], [True, True, False, False, False])
    rng = np.random.default_rng(0)
    n = 4000
    kept = np.array([draw_edges(c, rng) for _ in range(n)])
    freq = kept.mean(axis=0)
    se = np.sqrt(np.array([0.5, 0.3, 0.8]) * (1 - np.array([0.5, 0.3, 0.8])) / n)
    # each edge drawn at its probability (a draw that ignores them, e.g. linking at p >= 0.5,
    # gives 1, 0, 1 here and fails)
    assert np.all(np.abs(freq - [0.5, 0.3, 0.8]) < 4 * se)
    # the hospital records join at most one register person
    assert not (kept[:, 0] & kept[:, 1]).any()


def test_candidates_scaled_when_their_probabilities_sum_above_one() -> None:
    c = _candidates([(0, 2, 0.9), (1, 2, 0.9)], [True, True, False])
    rng = np.random.default_rng(1)
    kept = np.array([draw_edges(c, rng) for _ in range(2000)])
    assert (kept.sum(axis=1) == 1).all()  # always exactly one of the two
    assert abs(kept[:, 0].mean() - 0.5) < 0.05


def test_record_person_of_a_draw_is_connected_components() -> None:
    c = _candidates([(0, 1, 1.0), (2, 3, 1.0)], [True, False, True, False])
    rp = record_person_for(c, np.array([True, False]), b"k" * 20)
    persons = rp.group_by("person_id").len()
    assert sorted(persons["len"].to_list()) == [1, 1, 2]
    assert rp.filter(pl.col("record_id") == "R003")["link_method"].item() == "unlinked"


# ---------------------------------------------------------------- Rubin's rules


def _draw_tables(q: np.ndarray, se: float) -> list[pd.DataFrame]:
    """One estimates table per draw (column of ``q``); each row of ``q`` is one study."""
    q = np.atleast_2d(q)
    return [
        pd.DataFrame(
            {
                "outcome": [f"study_{i}" for i in range(q.shape[0])],
                "contrast": "c",
                "method": "m",
                "scale": "mean_difference",
                "estimate": q[:, d],
                "ci_low": q[:, d] - 1.959964 * se,
                "ci_high": q[:, d] + 1.959964 * se,
            }
        )
        for d in range(q.shape[1])
    ]


def test_rubin_pool_matches_the_hand_computation() -> None:
    q = np.array([1.0, 1.4, 0.8, 1.2])
    out = rubin_pool(_draw_tables(q, 0.5)).iloc[0]
    w, b, m = 0.25, q.var(ddof=1), 4
    t = w + (1 + 1 / m) * b
    assert out["estimate"] == pytest.approx(q.mean())
    assert out["total_var"] == pytest.approx(t)
    assert out["linkage_share"] == pytest.approx((1 + 1 / m) * b / t)
    with pytest.raises(PoolingError, match="at least 2 draws"):
        rubin_pool(_draw_tables(q[:1], 0.5))


def test_linkage_aware_intervals_cover_where_pooling_without_between_variance_does_not() -> None:
    """Simulated studies (truth 0): sampling error of SD 1 (the within-draw SE); the observed
    links put the estimate off by an error of SD 1, and the link draws spread around it with
    the same SD (proper imputation). Rubin's rules cover about 95% with the right width; the
    planted error, pooling without the between-draw variance, gives intervals too narrow and
    coverage far below."""
    rng = np.random.default_rng(21)
    studies, m, s, tau = 2000, 10, 1.0, 1.0
    q = (
        rng.normal(0, s, (studies, 1))  # sampling error (shared by the draws of a study)
        + rng.normal(0, tau, (studies, 1))  # linkage error of the observed links
        + rng.normal(0, tau, (studies, m))  # each draw's own link set
    )
    good = rubin_pool(_draw_tables(q, s))
    bad = rubin_pool(_draw_tables(q, s), include_between=False)
    # no bias; the pooled estimate's spread is the one the total variance claims
    assert abs(good["estimate"].mean()) < 0.1
    sd = np.sqrt(s**2 + tau**2 + tau**2 / m)
    assert good["estimate"].std() == pytest.approx(sd, rel=0.06)
    assert np.sqrt(good["total_var"]).mean() == pytest.approx(sd, rel=0.06)
    cover = ((good["ci_low"] <= 0) & (good["ci_high"] >= 0)).mean()
    cover_planted = ((bad["ci_low"] <= 0) & (bad["ci_high"] >= 0)).mean()
    assert 0.93 <= cover <= 0.975
    assert cover_planted < 0.88
    assert (good["ci_high"] - good["ci_low"]).mean() > 1.3 * (bad["ci_high"] - bad["ci_low"]).mean()


# ---------------------------------------------------------------- zones from a link set


def test_true_links_zone_has_one_person_per_true_person(full_run: Path, world: Path) -> None:
    """The analysis zone written from the truth's links: as many persons as the truth has
    among the staged records, and the persons table as the linker writes it."""
    from ground.run_layout import RunLayout

    run = RunLayout.at(full_run)
    con = duckdb.connect(str(run.linkage_db), read_only=True)
    try:
        cand = load_candidates(con)
    finally:
        con.close()
    truth = pl.read_parquet(world / "truth" / "record_person.parquet")
    rp = true_record_person(cand.records, truth, b"t" * 20)
    out = RunLayout.at(full_run.parent / "true_links_zone")
    write_link_set_zone(run.linkage_db, rp, out)
    az = duckdb.connect(str(out.analysis_db), read_only=True)
    try:
        persons = az.execute("SELECT count(*) FROM analysis.persons").fetchone()[0]  # type: ignore[index]
        cols = [r[0] for r in az.execute("DESCRIBE analysis.persons").fetchall()]
    finally:
        az.close()
    staged_truth = cand.records.join(truth, on=["source", "record_id"], how="left")
    expected = (
        staged_truth["person_id"].drop_nulls().n_unique() + staged_truth["person_id"].null_count()
    )
    assert persons == expected
    assert "person_key" in cols and "high_quality_links" in cols


@pytest.mark.slow
def test_link_uncertainty_command_pools_draws_beside_the_main_estimates(
    full_run: Path, tmp_path: Path
) -> None:
    """`cohort link-uncertainty` on a copy of the session run: two draws, pooled estimates
    beside the main ones, the draws' folders removed."""
    import shutil

    from tests.e2e import _cohort, _env

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    r = _cohort(
        "link-uncertainty",
        "--run",
        str(run),
        "--draws",
        "2",
        "--bootstrap-replicates",
        "0",
        env=_env(tmp_path),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    table = pd.read_csv(run / "results" / "linkage_uncertainty.csv")
    assert {"main_estimate", "estimate", "ci_low", "ci_high", "linkage_share"} <= set(table.columns)
    main = table[(table["outcome"] == "ks4_score") & (table["method"] == "regression")]
    assert len(main) and main["linkage_share"].between(0, 1).all()
    assert not (run / "link_draws").exists()
    # a run without scored pairs is named, one line, exit 2
    r = _cohort("link-uncertainty", "--run", str(tmp_path / "nowhere"), env=_env(tmp_path))
    assert r.returncode == 2 and "cohort link" in r.stderr
