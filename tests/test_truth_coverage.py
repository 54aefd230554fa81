"""Known-truth tests of the whole pipeline (synth -> validate -> link -> build -> model).

Slow: run with `make test-slow` (or `pytest -m slow tests/test_truth_coverage.py`). Each
20,000-child seed takes 20-60 s on two cores (2026-11-24), so the coverage suite takes 10-20
minutes per scenario and the 100,000-child checks about 2 minutes each. Results as of
2026-11-24 are in the README ("Linkage and estimates against the synthetic truth"): the
default-scenario coverage check fails on level-2 IPW (85% over seeds 1-20) and the 100k check
on the mental-health hazard ratio (seed 5).

* Coverage: over seeds 1..20 of 20,000 children, every main estimator's 95% interval covers the
  scenario's true effect (``truth/effects.json``) in at least 90% of seeds.
* One large world (100,000 children, seed 5, the seed the README reports): every adjusted
  estimate (IPW, AIPW, time-varying Cox) covers the truth and the unadjusted one misses wherever
  there is confounding to remove; under ``null_effect`` the adjusted intervals cover the null.

A note on what these can and cannot show: with k independent, exactly calibrated 95% intervals
the chance that all k cover in one world is 0.95^k (0.44 for 16), and an estimator whose true
coverage is 95% has 20 seeds with at most 2 misses only with probability 0.92. The single-world
check is the issue's requirement; the coverage suite is the statistical evidence.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from coverage_seeds import coverage_table, run_seed

pytestmark = pytest.mark.slow

SEEDS = range(1, 21)
CHILDREN = 20_000
MIN_COVERAGE = 0.90
ADJUSTED = ("ipw", "aipw", "cox_tv")
# The estimators whose coverage the README reports (the main contrast of each outcome, all
# three care contrasts for the KS4 outcomes).
MAIN = ("regression", "ipw", "aipw", "cox_tv", "poisson_pw")
# Appendicitis is the negative control: its hazard does not depend on adversity or care, so
# there is no confounding for adjustment to remove and the unadjusted interval may cover.
NO_CONFOUNDING = ("appendicitis",)


def _seeds(scenario: str, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    work = tmp_path_factory.mktemp(f"coverage_{scenario}")
    return pd.concat(
        [run_seed(seed, children=CHILDREN, scenario=scenario, workdir=work) for seed in SEEDS],
        ignore_index=True,
    )


@pytest.fixture(scope="module")
def default_rows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _seeds("default", tmp_path_factory)


@pytest.fixture(scope="module")
def null_rows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _seeds("null_effect", tmp_path_factory)


def _check_coverage(rows: pd.DataFrame) -> None:
    table = coverage_table(rows)
    main = table[table["method"].isin(MAIN)]
    assert (main["seeds"] == len(SEEDS)).all(), main[["outcome", "contrast", "method", "seeds"]]
    low = main[main["coverage"] < MIN_COVERAGE]
    assert low.empty, "coverage below 90%:\n" + low.to_string(index=False)
    estimated = set(zip(main["outcome"], main["contrast"], main["method"], strict=True))
    required = {
        (outcome, "cla_vs_nla", method)
        for outcome in ("ks4_score", "ks4_level2_inclusive")
        for method in ("regression", "ipw", "aipw")
    } | {
        (outcome, "cla_vs_nla", "cox_tv")
        for outcome in ("self_harm", "emergency_admission", "mental_health_admission")
    }
    assert required <= estimated, required - estimated


def test_coverage_default_20_seeds(default_rows: pd.DataFrame) -> None:
    _check_coverage(default_rows)
    # confounding is real: the unadjusted KS4 contrasts almost never cover
    t = coverage_table(default_rows)
    unadj = t[(t["method"] == "unadjusted") & (t["outcome"] == "ks4_score")]
    assert len(unadj) == 3 and (unadj["coverage"] <= 0.2).all(), unadj.to_string(index=False)


def test_coverage_null_effect_20_seeds(null_rows: pd.DataFrame) -> None:
    _check_coverage(null_rows)


def _single_world(scenario: str, tmp_path: Path) -> pd.DataFrame:
    return run_seed(5, children=100_000, scenario=scenario, workdir=tmp_path)


def _describe(rows: pd.DataFrame) -> str:
    return rows[
        ["outcome", "contrast", "method", "truth", "estimate", "ci_low", "ci_high"]
    ].to_string(index=False)


def test_default_100k_adjusted_cover_unadjusted_miss(tmp_path: Path) -> None:
    rows = _single_world("default", tmp_path)
    adjusted = rows[rows["method"].isin(ADJUSTED)]
    assert len(adjusted) >= 3 * 2 * 2 + 4, _describe(adjusted)  # 3 contrasts x 2 outcomes x 2 + Cox
    missed = adjusted[~adjusted["covers"]]
    assert missed.empty, "adjusted intervals missing the truth:\n" + _describe(missed)
    unadjusted = rows[
        rows["method"].isin(("unadjusted", "cox_tv_unadjusted"))
        & ~rows["outcome"].isin(NO_CONFOUNDING)
    ]
    covered = unadjusted[unadjusted["covers"]]
    assert covered.empty, "unadjusted intervals covering the truth:\n" + _describe(covered)


def test_null_effect_100k_adjusted_cover_the_null(tmp_path: Path) -> None:
    rows = _single_world("null_effect", tmp_path)
    adjusted = rows[rows["method"].isin(ADJUSTED)]
    null = adjusted["truth"].where(adjusted["scale"] != "hazard_ratio", adjusted["truth"] - 1)
    assert (null.abs() < 1e-12).all(), _describe(adjusted)
    missed = adjusted[~adjusted["covers"]]
    assert missed.empty, "adjusted intervals excluding the null:\n" + _describe(missed)
