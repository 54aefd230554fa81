"""E-values, events per covariate and empirical calibration from negative controls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.effects import e_value
from models.sensitivity import (
    beside_negative_controls,
    calibrate,
    calibrated_ratios,
    e_value_ci,
    e_value_point,
    events_per_covariate_warning,
    fit_systematic_error,
    to_risk_ratio,
)
from schemas.analyses import DEFAULT_ANALYSES


def test_e_value_of_vanderweele_and_dings_worked_example() -> None:
    # VanderWeele & Ding (2017): RR 3.9 (1.8-8.7): E-value 7.26 for the estimate, 3.0 for the
    # lower limit (the one nearer the null)
    assert e_value_point(3.9, "risk_ratio") == pytest.approx(7.26, abs=0.01)
    assert e_value_ci(3.9, 1.8, 8.7, "risk_ratio") == pytest.approx(3.0, abs=0.005)
    # protective: the upper limit is the one nearer the null, on the inverted scale
    assert e_value_ci(1 / 3.9, 1 / 8.7, 1 / 1.8, "risk_ratio") == pytest.approx(3.0, abs=0.005)
    # an interval including the null: 1
    assert e_value_ci(1.3, 0.9, 1.8, "hazard_ratio") == 1.0


def test_conversions_for_common_outcomes_and_mean_differences() -> None:
    # odds ratio of a common outcome: its square root
    assert to_risk_ratio(4.0, "odds_ratio", outcome_share=0.4) == pytest.approx(2.0)
    assert to_risk_ratio(4.0, "odds_ratio", outcome_share=0.05) == pytest.approx(4.0)
    # hazard ratio of a common outcome: (1 - 0.5^sqrt(HR)) / (1 - 0.5^sqrt(1/HR))
    hr = 2.0
    expect = (1 - 0.5 ** np.sqrt(hr)) / (1 - 0.5 ** np.sqrt(1 / hr))
    assert to_risk_ratio(hr, "hazard_ratio", outcome_share=0.3) == pytest.approx(expect)
    # a mean difference of half an SD: RR exp(0.91 x 0.5)
    assert to_risk_ratio(5.0, "mean_difference", sd=10.0) == pytest.approx(np.exp(0.455))
    # a risk difference with the unexposed risk
    assert to_risk_ratio(0.1, "risk_difference", risk_unexposed=0.2) == pytest.approx(1.5)
    assert np.isnan(to_risk_ratio(0.1, "risk_difference"))
    # the pipeline's call (point estimate): a 0/1 outcome's SD says whether it is common
    assert e_value(4.0, 2.25, 9.0, "odds_ratio", sd=0.5) == pytest.approx(2 + np.sqrt(2))
    rare = e_value(4.0, 2.25, 9.0, "odds_ratio", sd=np.sqrt(0.05 * 0.95))
    assert rare == pytest.approx(4 + np.sqrt(12))
    # the confidence limit nearer the null, of a common outcome's OR: sqrt(2.25) = 1.5
    assert e_value_ci(4.0, 2.25, 9.0, "odds_ratio", outcome_share=0.5) == pytest.approx(
        1.5 + np.sqrt(0.75)
    )
    # a mean difference: the limit nearer the null, standardised
    md = e_value_ci(-5.0, -8.0, -2.0, "mean_difference", sd=10.0)
    rr = 1 / np.exp(0.91 * -0.2)
    assert md == pytest.approx(rr + np.sqrt(rr * (rr - 1)))


def test_e_values_only_for_causal_contrasts() -> None:
    """Care characteristics among the looked after and effect-modification rows get none."""
    for a in DEFAULT_ANALYSES:
        if a.estimator in ("care_characteristic", "effect_modification", "stratified_effect"):
            assert a.e_value_methods == (), a.name


def test_events_per_covariate_warning_for_the_appendicitis_example() -> None:
    w = events_per_covariate_warning(8, 14, strata=22)
    assert "8 events for 14 covariates and 22 strata" in w and "at least 10" in w
    assert events_per_covariate_warning(140, 14) == ""


def test_empirical_calibration_recovers_the_systematic_error_and_restores_coverage() -> None:
    rng = np.random.default_rng(4)
    mu, tau = 0.3, 0.15
    se = rng.uniform(0.05, 0.2, 60)
    nc = rng.normal(mu, np.sqrt(tau**2 + se**2))
    err = fit_systematic_error(nc, se)
    assert err.mean == pytest.approx(mu, abs=0.08) and err.sd == pytest.approx(tau, abs=0.08)
    assert err.warning == ""
    # new estimates of a null effect with the same error: calibrated intervals cover ~95%,
    # the uncalibrated ones far less
    s_new = rng.uniform(0.05, 0.2, 400)
    b_new = rng.normal(mu, np.sqrt(tau**2 + s_new**2))
    cal = np.array([calibrate(b, s, err) for b, s in zip(b_new, s_new, strict=True)])
    covered = (cal[:, 1] <= 0) & (cal[:, 2] >= 0)
    raw = np.abs(b_new) <= 1.96 * s_new
    assert covered.mean() >= 0.9 and raw.mean() < 0.6, (covered.mean(), raw.mean())


def test_calibration_with_one_or_two_controls_says_what_it_cannot_do() -> None:
    one = fit_systematic_error(np.array([0.2]), np.array([0.1]))
    assert (
        one.sd == 0.0 and one.mean == pytest.approx(0.2) and "one negative control" in one.warning
    )
    two = fit_systematic_error(np.array([0.2, -0.1]), np.array([0.3, 0.25]))
    assert "2 negative controls" in two.warning
    with pytest.raises(ValueError, match="no usable"):
        fit_systematic_error(np.array([np.nan]), np.array([0.1]))


def test_calibrated_ratios_and_negative_controls_beside_the_main_estimates() -> None:
    est = pd.DataFrame(
        {
            "outcome": ["self_harm", "appendicitis"],
            "contrast": ["cla_vs_nla", "cla_vs_nla"],
            "method": ["cox_tv", "cox_tv"],
            "estimate": [1.6, 1.2],
            "ci_low": [1.2, 0.8],
            "ci_high": [2.13, 1.8],
        }
    )
    side = beside_negative_controls(est, ("appendicitis",), "cox_tv")
    assert len(side) == 1 and side.iloc[0]["nc_outcome"] == "appendicitis"
    assert side.iloc[0]["nc_estimate"] == 1.2
    cal, err = calibrated_ratios(est[:1], est[1:])
    assert err.n == 1
    assert cal.iloc[0]["calibrated_estimate"] == pytest.approx(1.6 / 1.2)
