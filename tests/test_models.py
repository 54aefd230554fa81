"""Estimators: pinned against independent implementations, known truth, degenerate data,
disclosure control, and the model stage on a pipeline run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st

from models import (
    DisclosureSettings,
    ExposureEffectFitter,
    PiecewisePoissonFitter,
    PropensityScoreFitter,
    TimeVaryingCoxFitter,
    control_counts,
    e_value,
)


def confounded(
    n: int, seed: int, effect: float = 2.0
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    x1 = rng.binomial(1, 0.3, n)
    x2 = rng.normal(0, 1, n)
    p = 1 / (1 + np.exp(-(-1.0 + 1.2 * x1 + 0.8 * x2)))
    t = rng.binomial(1, p)
    y = 30 - 8 * x1 - 4 * x2 + effect * t + rng.normal(0, 8, n)
    return y, t, pd.DataFrame({"x1": x1.astype(float), "x2": x2})


def test_regression_and_ipw_pinned_to_statsmodels() -> None:
    y, t, x = confounded(3000, 1)
    # regression imputation: OLS in the unexposed, ATT = mean over the exposed of y - m0(x)
    f = ExposureEffectFitter("regression").fit(y, t, x)
    d = sm.add_constant(x.to_numpy())
    ref = sm.OLS(y[t == 0], d[t == 0]).fit(cov_type="HC3")
    resid1 = y[t == 1] - d[t == 1] @ ref.params
    assert f.estimate_ == pytest.approx(resid1.mean(), rel=1e-10)
    g1 = d[t == 1].mean(axis=0)
    se = np.sqrt(resid1.var(ddof=1) / (t == 1).sum() + g1 @ ref.cov_params() @ g1)
    assert f.se_ == pytest.approx(se, rel=1e-10)
    ps = PropensityScoreFitter("ATT", truncate=None).fit(x, t)
    g = ExposureEffectFitter("ipw").fit(y, t, x, ps.weights_)
    ref_w = sm.WLS(y, sm.add_constant(t.astype(float)), weights=ps.weights_).fit(cov_type="HC1")
    assert g.estimate_ == pytest.approx(ref_w.params[1], rel=1e-10)
    assert g.se_ == pytest.approx(ref_w.bse[1], rel=1e-10)


def test_propensity_glm_pinned_to_statsmodels_and_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    from models.propensity import fit_binary_glm

    rng = np.random.default_rng(11)
    z = rng.normal(size=(3000, 4))
    t = (rng.random(3000) < -np.expm1(-np.exp(z @ [0.8, -0.4, 0.0, 0.3] - 0.7))).astype(float)
    b, ok = fit_binary_glm(z, t, "cloglog", l2=0.0)
    ref = sm.GLM(
        t, sm.add_constant(z), family=sm.families.Binomial(link=sm.families.links.CLogLog())
    ).fit()
    assert ok and np.allclose(b, ref.params, atol=1e-6)
    b, ok = fit_binary_glm(z, t, "logit", l2=1e-4)
    sk = LogisticRegression(C=1e4, tol=1e-10, max_iter=10_000).fit(z, t)
    assert ok and np.allclose(b, np.r_[sk.intercept_, sk.coef_[0]], atol=1e-4)


def test_link_selection_by_cross_validation_follows_the_exposure_process() -> None:
    """'Entered care before a deadline' under a proportional entry hazard is cloglog-linear;
    cross-validated deviance prefers cloglog there and logit for a logistic exposure."""
    from models.propensity import select_propensity_model

    rng = np.random.default_rng(12)
    n = 6000
    x = pd.DataFrame({"risk": rng.normal(size=n), "log_time_left": np.log(rng.uniform(1, 15, n))})
    lp = -2.5 + 1.2 * x["risk"] + x["log_time_left"]
    t_grouped = (rng.random(n) < -np.expm1(-np.exp(lp))).astype(int)
    t_logistic = (rng.random(n) < 1 / (1 + np.exp(-lp))).astype(int)
    for t, want in ((t_grouped, "cloglog"), (t_logistic, "logit")):
        sel = select_propensity_model({"main": x}, t, folds=5, seed=1)
        assert sel.loc[sel["selected"], "link"].item() == want, sel
    assert list(sel.columns) == ["design", "link", "n_columns", "cv_deviance", "selected"]


def test_restricted_cubic_spline_is_linear_beyond_the_outer_knots() -> None:
    from models.propensity import flexible_design, restricted_cubic_spline

    v = pd.Series(np.linspace(0, 17, 400))
    basis = restricted_cubic_spline(v, 5, "age")
    assert list(basis.columns) == ["age_rcs1", "age_rcs2", "age_rcs3"]
    q = np.quantile(v, [0.05, 0.95])
    for col in basis:
        for region in (v < q[0], v > q[1]):
            second = np.diff(basis.loc[region, col].to_numpy(), 2)
            assert np.allclose(second, 0, atol=1e-9)
    assert restricted_cubic_spline(pd.Series([1.0, 2.0] * 10), 4, "two").shape[1] == 0
    df = pd.DataFrame(
        {"age": v, "a": (v > 5).astype(float), "b": (v > 9).astype(float), "dep": v % 10}
    )
    x = flexible_design(
        df,
        df[["a", "b", "dep"]],
        splines={"age": 4, "dep": 3},
        count_of=["a", "b"],
        count_cap=2,
        interact_with="age",
        interaction_terms=["n_recorded_adversities", "dep"],
    )
    assert {"age", "age_rcs1", "age_rcs2", "dep_rcs1", "n_recorded_adversities_2"} <= set(x)
    assert {"age_x_n_recorded_adversities", "age_x_dep"} <= set(x)


def test_entropy_balancing_gives_exact_balance_and_logistic_weights() -> None:
    _y, t, x = confounded(3000, 13)
    x = x.assign(x1_x2=x["x1"] * x["x2"])
    ps = PropensityScoreFitter("ATT", truncate=None, method="balancing").fit(x, t)
    assert ps.method_ == "balancing" and not ps.warnings_
    w = ps.weights_
    for c in x:
        v = x[c].to_numpy()
        assert np.average(v[t == 0], weights=w[t == 0]) == pytest.approx(v[t == 1].mean(), abs=1e-8)
    assert w[t == 0].sum() == pytest.approx(t.sum())
    assert np.all(w[t == 1] == 1.0)
    # the weights are the odds of a logistic propensity score, which sums to the number exposed
    p = ps.propensity_
    odds = p[t == 0] / (1 - p[t == 0])
    assert np.allclose(odds / odds.sum(), w[t == 0] / w[t == 0].sum(), rtol=1e-6)
    assert p.sum() == pytest.approx(t.sum(), rel=1e-6)
    with pytest.raises(ValueError, match="ATT"):
        PropensityScoreFitter("ATE", method="balancing")


def test_infeasible_balance_falls_back_to_likelihood_with_a_warning() -> None:
    _y, t, x = confounded(1000, 14)
    x = x.assign(only_exposed=np.where(t == 1, 1.0, 0.0) * (np.arange(len(t)) % 2))
    ps = PropensityScoreFitter("ATT", truncate=None, method="balancing").fit(x, t)
    assert ps.method_ == "likelihood"
    assert any("infeasible" in w for w in ps.warnings_)


def test_balancing_ipw_standard_error_matches_its_sampling_spread() -> None:
    """The stacked-sandwich SE of IPW with balancing weights against 150 replications; the
    fixed-weight HC1 SE overstates it."""
    est, se, se_fixed = [], [], []
    for seed in range(150):
        y, t, x = confounded(1500, 1000 + seed)
        ps = PropensityScoreFitter("ATT", truncate=None, method="balancing").fit(x, t)
        f = ExposureEffectFitter("ipw").fit(y, t, x, ps.weights_, balanced_on=x)
        est.append(f.estimate_)
        se.append(f.se_)
        se_fixed.append(ExposureEffectFitter("ipw").fit(y, t, x, ps.weights_).se_)
    sd = float(np.std(est, ddof=1))
    assert abs(np.mean(est) - 2.0) < 3 * sd / np.sqrt(150)
    assert 0.85 < np.mean(se) / sd < 1.15, (np.mean(se), sd)
    assert np.mean(se_fixed) > np.mean(se)


def _sparse_cells(n: int, seed: int, cells: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """A binary outcome and an exposure that both depend on an authority-like category with
    ``cells`` levels (dummies), so a few unexposed children in the high-propensity cells carry
    large balancing weights and high leverage, as in the pipeline's KS4 cohorts."""
    rng = np.random.default_rng(seed)
    cell = rng.integers(0, cells, n)
    x1, x2 = rng.binomial(1, 0.3, n), rng.normal(0, 1, n)
    cell_effect = np.linspace(-1.5, 1.5, cells)[cell]
    t = rng.binomial(1, 1 / (1 + np.exp(-(-0.3 + 1.0 * x1 + 0.8 * x2 + cell_effect))))
    p_y = 1 / (1 + np.exp(-(0.2 - 1.0 * x1 - 0.6 * x2 + 0.5 * cell_effect)))
    y = rng.binomial(1, p_y).astype(float)
    cols = {"x1": x1.astype(float), "x2": x2}
    cols |= {f"cell{k}": (cell == k).astype(float) for k in range(1, cells)}
    return y, t, pd.DataFrame(cols)


def test_balancing_ipw_standard_error_matches_the_jackknife_in_sparse_cells() -> None:
    """The textbook small-sample answer for a weighting estimator's SE is the delete-one
    jackknife (each child left out, the balancing weights refitted). In sparse cells the
    plug-in (stacked-sandwich, HC0) SE is 0.69-0.84 of it; the leverage-corrected SE the
    fitter reports is within 5% of it."""
    from models.effects import _balancing_ipw_se, ipw_point

    for seed in (1, 3):
        y, t, x = _sparse_cells(600, seed, 12)
        ps = PropensityScoreFitter("ATT", truncate=None, method="balancing").fit(x, t)
        assert ps.method_ == "balancing"
        se = ExposureEffectFitter("ipw", binary=True).fit(y, t, x, ps.weights_, balanced_on=x).se_
        refit = ps.bootstrap_refitter(x, t)
        n = len(y)
        left_out = np.array(
            [
                ipw_point(y[rows], t[rows], refit(rows))
                for rows in (np.delete(np.arange(n), i) for i in range(n))
            ]
        )
        jackknife = np.sqrt((n - 1) / n * np.sum((left_out - left_out.mean()) ** 2))
        assert 0.95 < se / jackknife < 1.05, (seed, se, jackknife)
        plug_in = _balancing_ipw_se(y, t, ps.weights_, x.to_numpy(float), small_sample=False)
        assert plug_in / jackknife < 0.85, (seed, plug_in, jackknife)


def test_bootstrap_standard_errors_agree_with_analytic_ones_on_well_behaved_data() -> None:
    """Good overlap, no heavy weights: the bootstrap (weights and outcome models refitted per
    replicate) and the analytic standard errors should agree; the bootstrap is deterministic
    given its seed."""
    from models.effects import bootstrap_weighting_se

    y, t, x = confounded(3000, 17)
    ps = PropensityScoreFitter("ATT", truncate=None, method="balancing").fit(x, t)

    refit = ps.bootstrap_refitter(x, t)  # standardised once, as the model stage does
    rows = np.random.default_rng(5).choice(len(t), len(t))
    assert np.allclose(refit(rows), ps.refit_weights(x.iloc[rows], t[rows]), rtol=1e-6)

    outcomes = {"y": (y, x, False), "yb": ((y > 28).astype(float), x, True)}
    boot = bootstrap_weighting_se(t, refit, outcomes, replicates=150, seed=3)
    assert boot == bootstrap_weighting_se(t, refit, outcomes, replicates=150, seed=3)
    for name, (yy, _x, binary) in outcomes.items():
        ipw = ExposureEffectFitter("ipw", binary=binary).fit(yy, t, x, ps.weights_, balanced_on=x)
        aipw = ExposureEffectFitter("aipw", binary=binary).fit(yy, t, x, ps.weights_)
        assert 0.75 < boot[(name, "ipw")] / ipw.se_ < 1.33, (name, boot, ipw.se_)
        assert 0.75 < boot[(name, "aipw")] / aipw.se_ < 1.33, (name, boot, aipw.se_)
    w = ps.refit_weights(x, t)
    assert np.allclose(w, ps.weights_, rtol=1e-6)


def test_heterogeneous_effect_regression_targets_att_not_the_common_coefficient() -> None:
    """Effect 0 for x1 = 0 and 6 for x1 = 1, exposure more likely when x1 = 1: the ATT is far
    from the variance-weighted coefficient of OLS on exposure + covariates."""
    rng = np.random.default_rng(15)
    n = 20_000
    x1 = rng.binomial(1, 0.3, n)
    x2 = rng.normal(0, 1, n)
    t = rng.binomial(1, 1 / (1 + np.exp(-(-2.0 + 3.0 * x1 + 0.5 * x2))))
    y = 30 - 8 * x1 - 4 * x2 + 6.0 * x1 * t + rng.normal(0, 5, n)
    x = pd.DataFrame({"x1": x1.astype(float), "x2": x2})
    att = 6.0 * x1[t == 1].mean()
    ps = PropensityScoreFitter("ATT", truncate=None, method="balancing").fit(x, t)
    for method in ("regression", "ipw", "aipw"):
        balanced_on = x if method == "ipw" else None
        f = ExposureEffectFitter(method).fit(y, t, x, ps.weights_, balanced_on=balanced_on)  # type: ignore[arg-type]
        r = f.result("y", "t", "mean_difference")
        assert r.ci_low <= att <= r.ci_high, (method, r.estimate, att)
    common = sm.OLS(y, sm.add_constant(np.c_[t, x.to_numpy()])).fit(cov_type="HC1")
    assert not common.conf_int()[1][0] <= att <= common.conf_int()[1][1]


def test_adjusted_estimators_recover_known_effect_unadjusted_does_not() -> None:
    y, t, x = confounded(8000, 2, effect=2.0)
    ps = PropensityScoreFitter("ATT", truncate=None).fit(x, t)
    assert ps.balance_["balanced"].all() and not (ps.balance_["smd_before"].abs() < 0.1).all()
    for method in ("regression", "ipw", "aipw"):
        r = (
            ExposureEffectFitter(method)
            .fit(y, t, x, ps.weights_)
            .result("y", "t", "mean_difference")
        )  # type: ignore[arg-type]
        assert r.ci_low <= 2.0 <= r.ci_high, (method, r)
    u = ExposureEffectFitter("unadjusted").fit(y, t).result("y", "t", "mean_difference")
    assert not u.ci_low <= 2.0 <= u.ci_high


@pytest.mark.slow
def test_coverage_over_seeds() -> None:
    """Each estimator's 95% interval covers the truth in >= 90% of 40 simulated cohorts."""
    hits = {"regression": 0, "ipw": 0, "aipw": 0}
    for seed in range(40):
        y, t, x = confounded(2000, 100 + seed)
        ps = PropensityScoreFitter("ATT", truncate=None).fit(x, t)
        for m in hits:
            r = ExposureEffectFitter(m).fit(y, t, x, ps.weights_).result("y", "t", "md")  # type: ignore[arg-type]
            hits[m] += r.ci_low <= 2.0 <= r.ci_high
    assert all(h / 40 >= 0.9 for h in hits.values()), hits


def _tv_data(n: int, seed: int, hr: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Age-month counting-process rows: exponential hazard, care switching on at a random month."""
    rng = np.random.default_rng(seed)
    rows = []
    x = rng.binomial(1, 0.4, n)
    for i in range(n):
        start, end = int(rng.integers(60, 120)), 216
        switch = int(rng.integers(start, end + 60))
        base = 0.004 * np.exp(0.5 * x[i])
        for a, b, la in ((start, min(switch, end), 0), (min(switch, end), end, 1)):
            if b <= a:
                continue
            rate = base * (hr if la else 1.0)
            t_ev = rng.exponential(1 / rate)
            if t_ev < b - a:
                rows.append((i, a, a + max(1, int(np.ceil(t_ev))), la, 1, x[i]))
                break
            rows.append((i, a, b, la, 0, x[i]))
    df = pd.DataFrame(rows, columns=["person_key", "start", "stop", "looked_after", "event", "x"])
    return df, pd.DataFrame({"person_key": range(n), "x": x})


def test_time_varying_cox_recovers_hr_and_poisson_agrees() -> None:
    rows, _ = _tv_data(3000, 3, hr=1.8)
    cox = TimeVaryingCoxFitter().fit(rows, ["x"])
    pois = PiecewisePoissonFitter().fit(rows, ["x"])
    assert cox.ci_[0] <= 1.8 <= cox.ci_[1]
    assert pois.ci_[0] <= 1.8 <= pois.ci_[1]
    assert abs(np.log(cox.hazard_ratio_) - np.log(pois.hazard_ratio_)) < 0.1


def test_poisson_splits_rows_at_birthdays_and_agrees_with_cox_on_age_dependent_hazard() -> None:
    """Rows spanning several years of age: the hazard is zero before age 10 and high after 12,
    so a piecewise model that put a whole row in its starting year would be badly biased."""
    from models.survival import split_at_age_years

    rows = pd.DataFrame(
        {"person_key": [1, 1, 2], "start": [5, 30, 24], "stop": [30, 40, 36], "event": [0, 1, 1]}
    )
    pieces = split_at_age_years(rows)
    assert pieces[["start", "stop", "event"]].values.tolist() == [
        [5, 12, 0],
        [12, 24, 0],
        [24, 30, 0],
        [30, 36, 0],
        [36, 40, 1],
        [24, 36, 1],
    ]
    rng = np.random.default_rng(16)
    n, hr = 6000, 1.6
    recs = []
    for i in range(n):
        start = int(rng.integers(24, 150))
        switch = int(rng.integers(start, 230))
        x = rng.binomial(1, 0.4)
        for a, b, la in ((start, min(switch, 216), 0), (min(switch, 216), 216, 1)):
            if b <= a:
                continue
            # monthly hazard by age: 0 before 120 months, 0.002 to 144, 0.01 after
            months = np.arange(a, b)
            h = np.where(months < 120, 0, np.where(months < 144, 0.002, 0.01))
            h = h * np.exp(0.5 * x) * (hr if la else 1.0)
            hit = np.flatnonzero(rng.random(months.size) < h)
            if hit.size:
                recs.append((i, a, int(months[hit[0]]) + 1, la, 1, x))
                break
            recs.append((i, a, b, la, 0, x))
    tv = pd.DataFrame(recs, columns=["person_key", "start", "stop", "looked_after", "event", "x"])
    cox = TimeVaryingCoxFitter().fit(tv, ["x"])
    pois = PiecewisePoissonFitter().fit(tv, ["x"])
    assert abs(np.log(cox.hazard_ratio_) - np.log(pois.hazard_ratio_)) < 0.05
    assert pois.ci_[0] <= hr <= pois.ci_[1]


def test_poisson_newton_pinned_to_statsmodels_glm() -> None:
    from models.survival import fit_poisson_glm

    rng = np.random.default_rng(21)
    n = 5000
    x = pd.DataFrame(
        {"const": 1.0, "a": rng.normal(size=n), "b": rng.binomial(1, 0.3, n).astype(float)}
    )
    offset = np.log(rng.uniform(1, 12, n))
    y = rng.poisson(np.exp(-3 + 0.4 * x["a"] - 0.7 * x["b"] + offset)).astype(float)
    params, cov, converged = fit_poisson_glm(x, y, offset)
    ref = sm.GLM(y, x, family=sm.families.Poisson(), offset=offset).fit()
    assert converged
    assert np.allclose(params.to_numpy(), ref.params.to_numpy(), rtol=1e-8, atol=1e-10)
    # statsmodels reports the covariance at its previous iterate: agreement to 1e-5
    assert np.allclose(np.sqrt(np.diag(cov.to_numpy())), ref.bse.to_numpy(), rtol=1e-5)


def test_native_cox_pinned_to_lifelines_time_varying_fitter_with_ties_and_strata() -> None:
    """The native Efron fit on integer months equals lifelines' CoxTimeVaryingFitter: delayed
    entry, care switching on mid-follow-up, many tied event months, strata, two covariates."""
    rng = np.random.default_rng(3)
    recs = []
    for i in range(3000):
        start, x, g = int(rng.integers(0, 100)), rng.normal(), int(rng.integers(0, 4))
        switch, b2 = int(rng.integers(start, 200)), rng.binomial(1, 0.3)
        for a, b, la in ((start, min(switch, 180), 0), (min(switch, 180), 180, 1)):
            if b <= a:
                continue
            h = 0.004 * np.exp(0.4 * x + 0.3 * b2 + 0.2 * g) * (1.7 if la else 1.0)
            tt = rng.exponential(1 / h)
            if tt < b - a:
                recs.append((i, a, a + max(1, int(np.ceil(tt))), la, 1, x, b2, g))
                break
            recs.append((i, a, b, la, 0, x, b2, g))
    cols = ["person_key", "start", "stop", "looked_after", "event", "x", "b", "g"]
    df = pd.DataFrame(recs, columns=cols)
    assert df[df["event"] == 1].groupby("stop").size().max() > 5  # ties matter
    for strata in (None, ["g"]):
        native = TimeVaryingCoxFitter().fit(df, ["x", "b"], strata=strata)
        ref = TimeVaryingCoxFitter(engine="lifelines").fit(df, ["x", "b"], strata=strata)
        for col in ("coef", "se(coef)"):
            assert np.allclose(native.summary[col], ref.summary[col], rtol=1e-6), (strata, col)
        assert native.log_likelihood_ == pytest.approx(ref.log_likelihood_, rel=1e-9)
        assert native.hazard_ratio_ == pytest.approx(ref.hazard_ratio_, rel=1e-6)
    # a missing stratum level (an unknown authority) is a stratum of its own, not an error
    gaps = df.assign(g=df["g"].astype(object).where(df["g"] != 3, None))
    with_gap = TimeVaryingCoxFitter().fit(gaps, ["x", "b"], strata=["g"])
    same = TimeVaryingCoxFitter().fit(df, ["x", "b"], strata=["g"])
    assert with_gap.hazard_ratio_ == pytest.approx(same.hazard_ratio_, rel=1e-9)


def _two_row_children(n: int, seed: int, ties: bool) -> pd.DataFrame:
    """Counting-process rows: each child enters late, switches exposure once, may have one
    event; three strata. Without ties, every start and stop is a distinct integer."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        x, g = rng.normal(), int(rng.integers(0, 3))
        t0 = int(rng.integers(0, 20))
        switch = t0 + int(rng.integers(1, 30))
        end = switch + int(rng.integers(1, 40))
        dies = rng.random() < 0.5
        last = int(rng.integers(0, 2)) if dies else -1
        for k, (a, b) in enumerate(((t0, switch), (switch, end))):
            recs.append((i, a, b, k, int(k == last), x, g))
            if k == last:
                break
    df = pd.DataFrame(
        recs, columns=["person_key", "start", "stop", "looked_after", "event", "x", "g"]
    )
    if not ties:
        df["stop"] = df["stop"] * 4000 + 2 * rng.permutation(len(df))
        df["start"] = df["start"] * 4000 + 1
    return df


def test_cox_robust_standard_errors_pinned_to_statsmodels_and_a_jackknife() -> None:
    """The child-clustered sandwich: equals statsmodels' PHReg sandwich where there are no
    ties (its score residuals, Breslow's, are then Efron's; they miss summing to zero by a
    little, hence 1e-3); with tied months it agrees with the leave-one-child-out jackknife; the
    residuals sum to the score, so one cluster gives a zero variance."""
    from statsmodels.duration.hazard_regression import PHReg

    from models.survival import fit_cox_efron

    def args(df: pd.DataFrame) -> tuple[np.ndarray, ...]:
        x = df[["looked_after", "x"]].to_numpy(float)
        return (
            df["start"].to_numpy(),
            df["stop"].to_numpy(),
            df["event"].to_numpy(),
            x,
            df["g"].to_numpy(),
        )

    df = _two_row_children(400, 1, ties=False)
    beta, robust, _, _ = fit_cox_efron(*args(df), cluster=df["person_key"].to_numpy())
    ph = PHReg(
        df["stop"].to_numpy(float),
        df[["looked_after", "x"]].to_numpy(float),
        status=df["event"].to_numpy(),
        entry=df["start"].to_numpy(float),
        strata=df["g"].to_numpy(),
        ties="efron",
    )
    u = pd.DataFrame(np.nan_to_num(ph.score_residuals(beta))).groupby(df["person_key"]).sum()
    h_inv = np.linalg.inv(ph.hessian(beta))
    ref = h_inv @ (u.to_numpy().T @ u.to_numpy()) @ h_inv
    assert np.allclose(np.sqrt(np.diag(robust)), np.sqrt(np.diag(ref)), rtol=1e-3)

    df = _two_row_children(300, 2, ties=True)
    assert df[df["event"] == 1].groupby("stop").size().max() > 3  # tied event months
    a = args(df)
    beta, robust, _, _ = fit_cox_efron(*a, cluster=df["person_key"].to_numpy())
    _, model_based, _, _ = fit_cox_efron(*a)
    assert not np.allclose(robust, model_based)
    one = fit_cox_efron(*a, cluster=np.zeros(len(df), int))[1]
    assert np.abs(one).max() < 1e-12 * np.abs(robust).max() + 1e-15
    jack = np.array(
        [fit_cox_efron(*(v[(df["person_key"] != i).to_numpy()] for v in a))[0] for i in range(300)]
    )
    v_jack = (len(jack) - 1) / len(jack) * ((jack - jack.mean(axis=0)) ** 2).sum(axis=0)
    ratio = np.sqrt(np.diag(robust) / v_jack)
    assert np.all((ratio > 0.9) & (ratio < 1.02)), ratio  # the jackknife runs a little larger
    fitted = TimeVaryingCoxFitter(robust=True).fit(df, ["x"], strata=["g"])
    assert fitted.summary.loc["looked_after", "se(coef)"] == pytest.approx(np.sqrt(robust[0, 0]))
    with pytest.raises(ValueError, match="native"):
        TimeVaryingCoxFitter(penalizer=0.1, robust=True)


def test_cox_pinned_to_lifelines_coxph_without_time_varying_rows() -> None:
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(4)
    n = 600
    la = rng.binomial(1, 0.5, n)
    x = rng.normal(size=n)
    t = rng.exponential(1 / (0.05 * np.exp(0.6 * la + 0.3 * x)))
    stop = np.minimum(np.ceil(t), 40).astype(int)
    event = (t <= 40).astype(int)
    rows = pd.DataFrame(
        {
            "person_key": range(n),
            "start": 0,
            "stop": stop,
            "event": event,
            "looked_after": la,
            "x": x,
        }
    )
    mine = TimeVaryingCoxFitter().fit(rows, ["x"])
    ref = CoxPHFitter().fit(rows[["stop", "event", "looked_after", "x"]], "stop", "event")
    assert mine.hazard_ratio_ == pytest.approx(float(np.exp(ref.params_["looked_after"])), rel=1e-4)


def test_degenerate_data_warns_not_crashes() -> None:
    rows, _ = _tv_data(300, 5, hr=1.0)
    rows.loc[rows["looked_after"] == 1, "event"] = 0
    rows["constant"] = 1.0
    cox = TimeVaryingCoxFitter().fit(rows, ["x", "constant"])
    assert any("no events while looked after" in w for w in cox.warnings_)
    assert any("constant covariates dropped" in w for w in cox.warnings_)
    _y, t, x = confounded(400, 6)
    yb = (t == 1).astype(float)  # perfect separation by exposure
    f = ExposureEffectFitter("regression", binary=True).fit(yb, t, x)
    assert f.warnings_ and np.isfinite(f.estimate_)
    with pytest.raises(ValueError, match="one value"):
        PropensityScoreFitter().fit(x, np.ones(len(x), int))
    with pytest.raises(ValueError, match="estimand"):
        PropensityScoreFitter(estimand="ATX")  # type: ignore[arg-type]


def test_penalised_logit_matches_statsmodels_where_the_mle_exists() -> None:
    from models.effects import PenalisedLogit

    y, _t, x = confounded(4000, 8)
    yb = (y > 27).astype(float)
    xm = x.to_numpy(float)
    ref = sm.Logit(yb, sm.add_constant(xm)).fit(disp=0)
    pen = PenalisedLogit(yb, xm)
    assert pen.converged
    np.testing.assert_allclose(pen.params, ref.params, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(pen.bse, ref.bse, rtol=1e-3)
    d = sm.add_constant(xm)
    np.testing.assert_allclose(pen.predict(d), ref.predict(d), atol=1e-5)


def test_quasi_separated_outcome_model_is_penalised_with_a_warning() -> None:
    y, t, x = confounded(3000, 9)
    yb = (y > 27).astype(float)
    rare = np.zeros(len(y))
    rare[np.flatnonzero(t == 0)[:5]] = 1.0  # a category of five unexposed children ...
    yb[rare == 1] = 0.0  # ... who all miss the outcome: no maximum-likelihood fit
    xr = x.assign(rare=rare)
    f = ExposureEffectFitter("regression", binary=True).fit(yb, t, xr)
    assert any("quasi-separation" in w for w in f.warnings_), f.warnings_
    assert np.isfinite(f.estimate_) and np.isfinite(f.se_) and f.se_ > 0
    # the rare category barely matters: the estimate agrees with the fit without it
    g = ExposureEffectFitter("regression", binary=True).fit(yb, t, x)
    assert f.estimate_ == pytest.approx(g.estimate_, abs=0.01)
    assert not any("quasi-separation" in w for w in g.warnings_)
    a = ExposureEffectFitter("aipw", binary=True).fit(
        yb, t, xr, PropensityScoreFitter("ATT").fit(x, t).weights_
    )
    assert np.isfinite(a.estimate_) and any("quasi-separation" in w for w in a.warnings_)


def test_regression_standard_error_not_positive_is_a_warning_not_a_silent_nan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    y, t, x = confounded(400, 7)
    yb = (y > 25).astype(float)
    fitter = ExposureEffectFitter("regression", binary=True)
    real = fitter._outcome_model

    def broken_covariance(*args: object, **kwargs: object) -> object:
        res = real(*args, **kwargs)  # type: ignore[arg-type]
        cov = -np.eye(len(res.params))  # what a separated fit can leave behind
        res.cov_params = lambda: cov
        return res

    monkeypatch.setattr(fitter, "_outcome_model", broken_covariance)
    fitter.fit(yb, t, x)
    assert np.isfinite(fitter.estimate_) and np.isnan(fitter.se_)
    assert any("standard error unavailable" in w for w in fitter.warnings_)
    assert "standard error unavailable" in fitter.result("o", "c", "risk_difference").warning


def test_extreme_weights_are_reported() -> None:
    _y, t, x = confounded(2000, 7)
    x = x.assign(x3=np.where(t == 1, 3.0, 0.0) + np.random.default_rng(1).normal(0, 0.3, len(t)))
    ps = PropensityScoreFitter("ATT", truncate=99).fit(x, t)
    assert any("truncated" in w for w in ps.warnings_)


def test_e_value() -> None:
    assert e_value(2.0, 1.5, 2.5, "hazard_ratio") == pytest.approx(2 + np.sqrt(2))
    assert e_value(0.5, 0.4, 0.6, "hazard_ratio") == pytest.approx(2 + np.sqrt(2))
    assert np.isnan(e_value(0.1, 0, 0.2, "risk_difference"))


@given(
    st.lists(st.lists(st.integers(0, 400), min_size=2, max_size=5), min_size=1, max_size=8),
    st.integers(2, 20),
    st.sampled_from([1, 5, 10]),
)
@settings(max_examples=200, deadline=None)
def test_disclosure_control_properties(
    cells: list[list[int]], threshold: int, rounding: int
) -> None:
    width = min(len(r) for r in cells)
    table = pd.DataFrame([r[:width] for r in cells], columns=[f"c{j}" for j in range(width)])
    s = DisclosureSettings(
        threshold=threshold, rounding=rounding, override_reason="property test of the mechanics"
    )
    out = control_counts(table, list(table.columns), s)
    for i in range(len(table)):
        released = out.loc[i, list(table.columns)].tolist()
        suppressed = [v == "[c]" for v in released]
        for raw, v, sup in zip(table.loc[i].tolist(), released, suppressed, strict=True):
            if 0 < raw < threshold:
                assert sup  # primary suppression
            if not sup:
                assert int(v) % rounding == 0
        assert sum(suppressed) != 1  # a lone suppressed cell could be recovered from the total
        if any(suppressed):  # nor may the suppressed cells together make a small count
            assert sum(
                raw for raw, sup in zip(table.loc[i].tolist(), suppressed, strict=True) if sup
            ) >= threshold or all(
                s_ or raw == 0 for raw, s_ in zip(table.loc[i].tolist(), suppressed, strict=True)
            )
        total = out.loc[i, "total"]
        assert int(total.rstrip("+")) == sum(
            int(v) for v, sup in zip(released, suppressed, strict=True) if not sup
        )


def test_released_estimates_withhold_small_groups_but_not_within_exposed_contrasts() -> None:
    from models.disclosure import control_estimates

    est = pd.DataFrame(
        {
            "outcome": ["ks4_score"] * 4,
            "contrast": [
                "cla_vs_nla",
                "long_vs_nla",
                "per_placement_move",
                "per_year_age_at_entry",
            ],
            "method": ["aipw", "aipw", "regression", "regression"],
            "scale": ["mean_difference"] * 4,
            "estimate": [-1.5, -1.2, -0.4, -0.3],
            "ci_low": [-2.0, -2.0, -0.6, -0.9],
            "ci_high": [-1.0, -0.4, -0.2, 0.3],
            "p_value": [0.01, 0.02, 0.001, 0.3],
            "n_exposed": [120, 7, 118, 6],
            "n_unexposed": [4000, 4000, 0, 0],
        }
    )
    out = control_estimates(est, DisclosureSettings(threshold=10, rounding=5))
    assert out["estimate"].tolist() == ["-1.50", "withheld", "-0.400", "withheld"]
    # a withheld estimate's counts go with it
    assert out["n_exposed"].tolist() == ["120", "[c]", "120", "[c]"]
    small_unexposed = est.assign(n_unexposed=[3, 4000, 0, 0], n_exposed=[120, 120, 118, 118])
    assert control_estimates(small_unexposed)["estimate"].tolist()[0] == "withheld"


def test_model_stage_on_a_pipeline_run(linked_run: Path, tmp_path: Path) -> None:
    import shutil

    from cohort import build_cohort
    from ground.run_layout import RunLayout
    from models import run_models

    run = tmp_path / "run"  # a copy: the session's linked run is shared by the xdist workers
    shutil.copytree(linked_run, run)
    layout = RunLayout.at(run)
    build_cohort(layout=layout)
    run_models(layout=layout)
    est = pd.read_csv(layout.results_dir / "estimates.csv")
    assert list(est.columns) == [
        "outcome",
        "contrast",
        "method",
        "scale",
        "estimate",
        "ci_low",
        "ci_high",
        "p_value",
        "n_exposed",
        "n_unexposed",
        "warning",
        "events_exposed",
        "events_unexposed",
    ]
    for outcome, method in (
        ("ks4_score", "aipw"),
        ("self_harm", "cox_tv"),
        ("appendicitis", "cox_tv"),
        ("absence_rate", "gee"),
        ("ks4_score", "regression"),
    ):
        assert ((est["outcome"] == outcome) & (est["method"] == method)).any(), (outcome, method)
    assert est["contrast"].str.endswith("_x_cla").any()
    for f in (
        "forest_hazard_ratios.png",
        "km_self_harm.png",
        "love_plot.png",
        "propensity_overlap.png",
    ):
        assert (layout.figures_dir / f).stat().st_size > 1000
    from models.outputs import read_release_csv  # the release format's one reader

    released = read_release_csv(layout.release_dir / "table1_counts.csv")
    for v in released[["n_CLA", "n_NLA"]].to_numpy().ravel():
        assert v == "[c]" or int(v) % 5 == 0


# --- analyses declared as data (schemas/analyses.py, models/estimators.py) ---------------------


def test_default_study_config_declares_todays_analyses() -> None:
    """study_default.yaml's `analyses:` section, StudyConfig's default and schemas'
    DEFAULT_ANALYSES are one list (the one that reproduces the published estimates)."""
    from cohort.config import StudyConfig, load_study_config
    from models.estimators import ESTIMATORS
    from schemas.analyses import DEFAULT_ANALYSES

    assert load_study_config().analyses == DEFAULT_ANALYSES == StudyConfig().analyses
    assert {a.estimator for a in DEFAULT_ANALYSES} <= set(ESTIMATORS)
    assert [a.contrast for a in DEFAULT_ANALYSES[:3]] == [
        "cla_vs_nla",
        "long_vs_nla",
        "short_vs_nla",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"outcome": ["ks4_score"]}, "analyses.0.outcome`: Extra inputs are not permitted"),
        ({"contrast": "CLA vs NLA"}, "analyses.0.contrast`: Value error, 'CLA vs NLA' must be"),
        ({"population": "linked"}, "analyses.0.population`: Input should be 'all' or"),
        ({"options": {"x'; DROP": 1}}, "analyses.0.options`: Value error"),
    ],
)
def test_a_bad_declaration_names_the_analysis_and_the_key(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    import yaml

    from cohort.config import DEFAULT_CONFIG, load_study_config
    from ground.errors import ConfigError

    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    config["analyses"][0].update(entry)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid study config") as err:
        load_study_config(path)
    assert message in str(err.value)


def test_an_unknown_estimator_or_option_is_refused_before_any_fit() -> None:
    from ground.errors import ConfigError
    from models import ModelSettings
    from models.run import check_analyses
    from schemas.analyses import DEFAULT_ANALYSES

    first = DEFAULT_ANALYSES[0]
    typo = first.model_copy(update={"options": {**first.options, "methodz": ["aipw"]}})
    with pytest.raises(ConfigError, match=r"'ks4_cla_vs_nla' \(estimator exposure_effect\): "):
        check_analyses([typo], ModelSettings())
    with pytest.raises(ConfigError, match="`options.methodz`: Extra inputs are not permitted"):
        check_analyses([typo], ModelSettings())
    unknown = first.model_copy(update={"estimator": "tmle"})
    with pytest.raises(ConfigError, match="unknown estimator 'tmle'; known: absence_gee, "):
        check_analyses([unknown], ModelSettings())
    with pytest.raises(ConfigError, match="two analyses are named 'ks4_cla_vs_nla'"):
        check_analyses([first, first], ModelSettings())
    check_analyses(DEFAULT_ANALYSES, ModelSettings())


def test_the_study_flow_refuses_a_bad_analysis_before_any_stage(tmp_path: Path) -> None:
    """``cohort run --config`` with an unknown estimator fails before validation starts (it
    used to surface only when the model stage began, after validation and linkage)."""
    import yaml

    from cohort.config import DEFAULT_CONFIG
    from ground.errors import ConfigError
    from orchestration.study_flow import study_flow

    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    config["analyses"][0]["estimator"] = "tmle"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="unknown estimator 'tmle'"):
        study_flow.fn(str(tmp_path / "no_delivery"), str(run), str(path), demo=True)
    assert not run.exists()


def test_fitters_built_from_settings_are_the_stages() -> None:
    """A notebook that builds its fitters with from_settings gets the pipeline's defaults
    (the notebook's old PropensityScoreFitter("ATT", trim=..., truncate=...) fitted by
    maximum likelihood, where the stage balances exactly)."""
    from models import ModelSettings

    ps = PropensityScoreFitter.from_settings(ModelSettings())
    assert (ps.method, ps.estimand, ps.truncate, ps.trim, ps.balance_threshold, ps.link) == (
        "balancing",
        "ATT",
        None,
        0.0,
        0.1,
        "logit",
    )
    other = ModelSettings(
        propensity_method="likelihood", weight_truncation_percentile=99.0, trim=0.01
    )
    ps = PropensityScoreFitter.from_settings(other, link="cloglog")
    assert (ps.method, ps.truncate, ps.trim, ps.link) == ("likelihood", 99.0, 0.01, "cloglog")
    f = ExposureEffectFitter.from_settings(ModelSettings(), "ipw", binary=True)
    assert (f.method, f.binary) == ("ipw", True)
    # the stage's path reproduces the estimate a direct fit on the same design gives
    y, t, x = confounded(1500, 3)
    w = PropensityScoreFitter.from_settings(ModelSettings()).fit(x, t).weights_
    direct = ExposureEffectFitter("ipw").fit(y, t, x, w).estimate_
    assert ExposureEffectFitter.from_settings(ModelSettings(), "ipw").fit(
        y, t, x, w
    ).estimate_ == pytest.approx(direct, rel=1e-12)


@pytest.fixture(scope="module")
def built_copy(full_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's full run, copied without its linkage zone (a run to rebuild and refit)."""
    import shutil

    run = tmp_path_factory.mktemp("analyses") / "run"
    shutil.copytree(
        full_run,
        run,
        ignore=shutil.ignore_patterns("linkage_zone.duckdb*", "*.wal", "validation", "tmp"),
    )
    return run


def test_a_contrast_and_an_estimator_added_in_config_only(built_copy: Path, tmp_path: Path) -> None:
    """One entry in the study config adds a contrast (an existing estimator on other care
    groups); one more entry plus one class adds an estimator. Both are fitted, written with
    their analysis named, put where their declaration says in the report, and the existing
    analyses' rows are unchanged."""
    import yaml

    from cohort import build_cohort
    from cohort.config import DEFAULT_CONFIG, load_study_config
    from ground.run_layout import RunLayout
    from models import ModelSettings, run_models
    from models.effects import Estimate
    from models.estimators import ESTIMATORS, AnalysisEstimator, CohortData, register
    from orchestration.report import build_report

    layout = RunLayout.at(built_copy)
    before = pd.read_csv(layout.results_dir / "estimates.csv")
    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    config["analyses"].insert(
        3,
        {
            "name": "ks4_long_vs_short",
            "label": "KS4: long vs short care",
            "estimator": "exposure_effect",
            "outcomes": ["ks4_score", "ks4_level2_inclusive"],
            "contrast": "long_vs_short",
            "options": {"exposed": ["long"], "unexposed": ["short"], "methods": ["aipw"]},
            "e_value_methods": ["aipw"],
        },
    )
    config["analyses"].append(
        {
            "name": "ks4_raw_gap",
            "label": "KS4: raw CLA-NLA gap",
            "estimator": "raw_gap",
            "outcomes": ["ks4_score"],
            "contrast": "raw_gap",
        }
    )
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    @register
    class RawGap(AnalysisEstimator):
        """Mean outcome of the CLA minus the NLA: the smallest estimator there is."""

        name = "raw_gap"

        def _fit(self, cohort: CohortData) -> None:
            out = self.analysis.outcomes[0]
            kids = self.population(cohort)
            cla = kids.loc[kids["group"] == "CLA", out].dropna()
            nla = kids.loc[kids["group"] == "NLA", out].dropna()
            gap = float(cla.mean() - nla.mean())
            self.estimates_.append(
                Estimate(
                    out, "raw_gap", "raw", "mean_difference", gap, gap, gap, 1.0, len(cla), len(nla)
                )
            )

    try:
        build_cohort(layout=layout, config=load_study_config(path))
        run_models(layout=layout, settings=ModelSettings(bootstrap_replicates=0))
    finally:
        ESTIMATORS.pop("raw_gap")
    est = pd.read_csv(layout.results_dir / "estimates.csv")
    named = pd.read_csv(layout.results_dir / "estimate_analyses.csv")
    new = est[est["contrast"] == "long_vs_short"]
    assert new["method"].tolist() == ["aipw", "aipw"]
    assert new["outcome"].tolist() == ["ks4_score", "ks4_level2_inclusive"]
    assert set(named.loc[new.index, "analysis"]) == {"ks4_long_vs_short"}
    # the unexposed are the short-care children: as many as short_vs_nla's exposed
    short = est[(est["contrast"] == "short_vs_nla") & (est["method"] == "aipw")]
    assert new["n_unexposed"].tolist() == short["n_exposed"].tolist()
    gap = est[est["contrast"] == "raw_gap"]
    assert len(gap) == 1 and named.loc[gap.index[0], "analysis"] == "ks4_raw_gap"
    # declaration order is row order: the new contrast right after the three care contrasts
    # (9 rows each: 4 methods for the score, 4 plus an odds ratio for level 2)
    contrasts = ["cla_vs_nla", "long_vs_nla", "short_vs_nla"]
    assert (
        est["contrast"].tolist()[:29]
        == [c for c in contrasts for _ in range(9)] + ["long_vs_short"] * 2
    )
    assert gap.index[0] == len(est) - 1
    # the existing analyses' rows: same rows, same point estimates (bootstrap SEs aside)
    keys = ["outcome", "contrast", "method", "scale"]
    old = est[~est["contrast"].isin(["long_vs_short", "raw_gap"])]
    assert old[keys].reset_index(drop=True).equals(before[keys])
    assert np.allclose(old["estimate"], before["estimate"], rtol=1e-9, equal_nan=True)
    sens = pd.read_csv(layout.results_dir / "sensitivity.csv")
    assert (sens["contrast"] == "long_vs_short").sum() == 2
    page = build_report(layout).read_text(encoding="utf-8")
    main = page[page.index('<section id="estimates">') : page.index('<section id="km">')]
    assert "long_vs_short" in main and "raw_gap" in main


def test_a_declared_outcome_missing_from_the_cohort_is_named_before_any_fit() -> None:
    from ground.errors import ConfigError
    from models import CohortData, ModelSettings, run_analyses
    from schemas.analyses import DEFAULT_ANALYSES

    cohort = CohortData(
        pd.DataFrame({"person_key": ["a"], "ks4_score": [40.0], "high_quality_links": [1]}),
        pd.DataFrame({"person_key": ["a"], "outcome": ["self_harm"]}),
        pd.DataFrame({"person_key": ["a"], "absence_rate": [0.1]}),
    )
    typo = DEFAULT_ANALYSES[0].model_copy(update={"outcomes": ("ks4_scor",)})
    with pytest.raises(ConfigError, match=r"'ks4_cla_vs_nla': outcome\(s\) ks4_scor not in"):
        run_analyses(cohort, [typo], ModelSettings())
    km = next(a for a in DEFAULT_ANALYSES if a.estimator == "kaplan_meier")
    with pytest.raises(ConfigError, match="emergency_admission not in cohort.person_time"):
        run_analyses(cohort, [km], ModelSettings())
    survival = next(a for a in DEFAULT_ANALYSES if a.estimator == "time_varying_survival")
    wrong = typo.model_copy(update={"outcomes": survival.outcomes})
    with pytest.raises(ConfigError, match="`outcomes` must list columns"):
        run_analyses(cohort, [wrong], ModelSettings())
