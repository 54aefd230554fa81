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
    f = ExposureEffectFitter("regression").fit(y, t, x)
    ref = sm.OLS(y, sm.add_constant(np.c_[t, x.to_numpy()])).fit(cov_type="HC1")
    assert f.estimate_ == pytest.approx(ref.params[1], rel=1e-10)
    assert f.se_ == pytest.approx(ref.bse[1], rel=1e-10)
    ps = PropensityScoreFitter("ATT", truncate=None).fit(x, t)
    g = ExposureEffectFitter("ipw").fit(y, t, x, ps.weights_)
    ref_w = sm.WLS(y, sm.add_constant(t.astype(float)), weights=ps.weights_).fit(cov_type="HC1")
    assert g.estimate_ == pytest.approx(ref_w.params[1], rel=1e-10)


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
    s = DisclosureSettings(threshold=threshold, rounding=rounding)
    out = control_counts(table, list(table.columns), s)
    for i in range(len(table)):
        released = out.loc[i, list(table.columns)].tolist()
        suppressed = [v.startswith("<") for v in released]
        for raw, v, sup in zip(table.loc[i].tolist(), released, suppressed, strict=True):
            if 0 < raw < threshold:
                assert sup  # primary suppression
            if not sup:
                assert int(v) % rounding == 0
        assert sum(suppressed) != 1  # a lone suppressed cell could be recovered from the total
        total = out.loc[i, "total"]
        assert int(total.rstrip("+")) == sum(
            int(v) for v, sup in zip(released, suppressed, strict=True) if not sup
        )


def test_model_stage_on_a_pipeline_run(linked_run: Path) -> None:
    from models import run_models
    from pipelines.cohort import build_cohort
    from pipelines.run_layout import RunLayout

    layout = RunLayout.at(linked_run)
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
    released = pd.read_csv(layout.release_dir / "table1_counts.csv", dtype=str)
    for v in released[["n_CLA", "n_NLA"]].to_numpy().ravel():
        assert v.startswith("<") or int(v) % 5 == 0
