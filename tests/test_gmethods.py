"""G-methods for care entry as a time-varying treatment (models/gmethods.py) against a known
truth.

The fast checks simulate the cohort tables directly (no pipeline): children in need whose yearly
chance of entering care rises with the adversity factors recorded since their referral, factors
that care in turn makes rarer and that lower KS4 - the time-varying confounding of the world's
``time_varying_confounding`` scenario, in a few thousand rows. The true ATT is computed from each
child's two potential outcomes (common random numbers). Sequential trial emulation with the
recorded factors must find it; the same estimator without them (baseline-only weights) must not.
The declared analyses' rows in a whole run are checked on the session's shared run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.gmethods import (
    SequentialTrialEmulation,
    absence_msm,
    covariates_at,
    ks4_year_start_day,
    trial_periods,
)

CONFOUNDERS = ("new_factors_recorded", "new_protection_plan")


def simulate_ks4(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Children (cohort.children's columns the estimator reads), their person_time rows (the
    recorded factors as of each year since referral) and the true ATT of care before year 11.

    Year k after referral: a child not yet in care enters at hazard 0.1 x exp(0.5 b + 0.8 L)
    (b a baseline factor, L = 1 once a new factor was recorded at an earlier review); each year
    a new factor arises with probability 0.15 x exp(0.5 u - 0.5), halved once the child is in
    care (u an unrecorded family risk); KS4 = 50 - 4 b - 3 u - 4 L (by year 11) + 3 in care +
    noise. The entry hazard's range is kept moderate: with several factors each multiplying it
    by e, the weights of the few never-entered high-risk children reach the thousands and the
    pooled estimate is biased in samples of this size (a practical positivity violation)."""
    rng = np.random.default_rng(seed)
    index = pd.Timestamp("2012-01-01") + pd.to_timedelta(rng.integers(0, 3000, n), unit="D")
    age = rng.uniform(4.0, 13.5, n)  # year 11 starts after the referral (KS4 is an outcome)
    children = pd.DataFrame(
        {"person_key": [f"p{i}" for i in range(n)], "index_date": index, "age_at_index": age}
    )
    horizon = ks4_year_start_day(children)
    b = rng.binomial(1, 0.4, n).astype(float)
    u = rng.normal(size=n)
    exp1 = rng.exponential(size=n)  # entry when the cumulative hazard reaches it
    cum = np.zeros(n)
    entry = np.full(n, np.nan)
    factors = np.zeros(n)  # factual
    factors_never = np.zeros(n)  # had the child never entered care
    pt_rows = [pd.DataFrame({"person_key": children["person_key"], "start_day": 0, "l": 0.0})]
    for k in range(int(np.ceil(horizon.max() / 365)) + 1):
        start, end = 365 * k, np.minimum(365 * (k + 1), horizon)
        live = (start < horizon) & np.isnan(entry)
        rate = 0.1 * np.exp(0.5 * b + 0.8 * factors)
        years = np.clip(end - start, 0, None) / 365.25
        new_cum = cum + np.where(live, rate * years, 0.0)
        enters = live & (new_cum >= exp1)
        frac = np.where(enters, (exp1 - cum) / np.where(enters, rate * years, 1.0), 0.0)
        entry = np.where(enters, start + np.ceil(frac * (end - start)).clip(1), entry)
        cum = new_cum
        # the year's new factor (recorded at the review at its end), common random numbers
        draw = rng.uniform(size=n)
        in_care = ~np.isnan(entry) & (entry <= end)
        p_new = 0.15 * np.exp(0.5 * u - 0.5)
        factors = np.maximum(
            factors, (draw < np.where(in_care, 0.5 * p_new, p_new)) & (end < horizon)
        )
        factors_never = np.maximum(factors_never, (draw < p_new) & (end < horizon))
        pt_rows.append(
            pd.DataFrame(
                {"person_key": children["person_key"], "start_day": 365 * (k + 1) + 1, "l": factors}
            )
        )
    treated = ~np.isnan(entry)
    noise = rng.normal(0, 8, n)
    y0 = 50 - 4 * b - 3 * u - 4 * factors_never + noise
    y1 = 50 - 4 * b - 3 * u - 4 * factors + 3 + noise
    y = np.where(treated, y1, y0)
    children = children.assign(
        care_entry_date=index + pd.to_timedelta(entry, unit="D"),
        ks4_care_group=np.where(treated, "short", "none"),
        ks4_score=y,
        b=b,
    )
    pt = pd.concat(pt_rows, ignore_index=True)
    pt = pt.assign(outcome="self_harm", new_factors_recorded=pt["l"], new_protection_plan=0.0).drop(
        columns="l"
    )
    return children, pt, float(np.mean(y1[treated] - y0[treated]))


def fit_trials(
    children: pd.DataFrame, pt: pd.DataFrame, confounders: tuple[str, ...]
) -> tuple[float, float]:
    periods = trial_periods(children, pt, confounders)
    r = SequentialTrialEmulation().fit(
        periods, children[["b"]], confounders, {"y": children["ks4_score"].to_numpy()}
    )["y"]
    return r.estimate, r.se


def test_trial_periods_follow_each_child_to_entry_or_year_11() -> None:
    children, pt, _ = simulate_ks4(400, 1)
    periods = trial_periods(children, pt, CONFOUNDERS)
    horizon = ks4_year_start_day(children)
    treated = children["ks4_care_group"] != "none"
    entered = periods.groupby("child")["entered"].sum()
    assert (entered == treated.astype(float).to_numpy()).all()
    last = periods.groupby("child")["period"].max().to_numpy()
    entry = (children["care_entry_date"] - children["index_date"]).dt.days.to_numpy()
    # an entrant's last period holds its entry day; a control's the last day before year 11
    day = np.where(treated, entry, horizon - 1)
    assert (last == np.maximum(np.ceil(day / 365) - 1, 0)).all()
    # the recorded factors are those as of the period's first day, never after it
    one = periods[periods["period"] == 2].iloc[0]
    key = children["person_key"].iloc[int(one["child"])]
    rows = pt[(pt["person_key"] == key) & (pt["start_day"] <= 2 * 365 + 1)]
    assert one["new_factors_recorded"] == rows["new_factors_recorded"].max()


def test_covariates_at_carries_the_latest_value_across_outcomes() -> None:
    pt = pd.DataFrame(
        {
            "person_key": ["a", "a", "a", "b"],
            "outcome": ["x", "x", "y", "x"],
            "start_day": [0, 100, 300, 0],
            "new_factors_recorded": [0.0, 1.0, 2.0, 0.0],
        }
    )
    got = covariates_at(
        pt, pd.Series(["a", "a", "a", "b"]), np.array([50, 200, 400, 10]), ["new_factors_recorded"]
    )
    assert got["new_factors_recorded"].tolist() == [0.0, 1.0, 2.0, 0.0]


def test_trial_emulation_finds_the_truth_where_baseline_weights_do_not() -> None:
    """One large simulated cohort: with the recorded factors the pooled ATT is within 2.5 SE
    of the truth; with baseline covariates only it misses by more than 3 SE (the bias the
    g-method removes)."""
    children, pt, truth = simulate_ks4(12_000, 11)
    est, se = fit_trials(children, pt, CONFOUNDERS)
    base, base_se = fit_trials(children, pt, ())
    assert abs(est - truth) < 2.5 * se, (est, se, truth)
    assert abs(base - truth) > 3 * base_se, (base, base_se, truth)
    assert 0.1 < se < 1.5


def test_trial_emulation_sandwich_se_matches_the_spread_over_seeds() -> None:
    """Over 20 simulated cohorts: mean bias within 3 Monte Carlo SEs of zero, the SD of the
    estimates over their mean sandwich SE between 0.7 and 1.4 (20 seeds: the ratio's own
    sampling error is about 16%), coverage at least 80%."""
    est, se, truth = [], [], []
    for seed in range(20):
        children, pt, t = simulate_ks4(2_500, 100 + seed)
        e, s = fit_trials(children, pt, CONFOUNDERS)
        est.append(e)
        se.append(s)
        truth.append(t)
    err = np.asarray(est) - np.asarray(truth)
    ses = np.asarray(se)
    assert abs(err.mean()) < 3 * err.std(ddof=1) / np.sqrt(len(err)), err
    assert 0.7 < err.std(ddof=1) / ses.mean() < 1.4, (err.std(ddof=1), ses.mean())
    assert np.mean(np.abs(err) < 1.96 * ses) >= 0.8


def test_bootstrap_and_sandwich_standard_errors_agree() -> None:
    children, pt, _ = simulate_ks4(3_000, 5)
    periods = trial_periods(children, pt, CONFOUNDERS)
    y = {"y": children["ks4_score"].to_numpy()}
    sandwich = SequentialTrialEmulation().fit(periods, children[["b"]], CONFOUNDERS, y)["y"]
    boot = SequentialTrialEmulation(replicates=100).fit(periods, children[["b"]], CONFOUNDERS, y)
    assert sandwich.estimate == pytest.approx(boot["y"].estimate)
    assert 0.75 < sandwich.se / boot["y"].se < 1.33


def test_declared_gmethod_rows_in_a_whole_run(full_run) -> None:  # type: ignore[no-untyped-def]
    """The study config's g-method analyses write their rows to results/estimates.csv."""
    est = pd.read_csv(full_run / "results" / "estimates.csv")
    trials = est[est["method"] == "trial_emulation"]
    assert set(trials["outcome"]) == {"ks4_score", "ks4_level2_inclusive"}
    assert (trials["contrast"] == "cla_vs_nla").all()
    assert trials["estimate"].notna().all() and (trials["ci_low"] < trials["ci_high"]).all()
    msm = est[est["method"] == "msm_iptw"]
    assert set(msm["contrast"]) == {f"looked_after_year_since_entry_{j}" for j in range(5)}
    assert (msm["outcome"] == "absence_rate").all()


def test_absence_msm_weights_are_one_without_time_varying_confounders() -> None:
    """Stabilised weights whose numerator and denominator hold the same covariates are 1: the
    baseline-only MSM is the plain regression."""
    rng = np.random.default_rng(3)
    n = 300
    kids = pd.DataFrame({"person_key": [f"k{i}" for i in range(n)], "b": rng.binomial(1, 0.5, n)})
    entry_year = np.where(rng.uniform(size=n) < 0.4, rng.integers(0, 4, n), 99)
    rows = []
    for y in range(6):
        yse = np.where(y >= entry_year, y - entry_year, np.nan)
        rows.append(
            pd.DataFrame(
                {
                    "person_key": kids["person_key"],
                    "academic_year": 2010 + y,
                    "years_from_index": y,
                    "age": 8 + y,
                    "years_since_entry": pd.array(yse, dtype="Float64"),
                    "looked_after_this_year": (~np.isnan(yse)).astype(int),
                    "new_factors_recorded": rng.poisson(0.3, n),
                    "new_protection_plan": 0,
                    "absence_rate": rng.uniform(0, 0.2, n) - 0.02 * ~np.isnan(yse),
                }
            )
        )
    sy = pd.concat(rows, ignore_index=True)
    r = absence_msm(sy, kids, ["b"], [], ())
    assert np.allclose(r.weights, 1.0)
    assert r.rows["years_since_entry"].tolist() == [0, 1, 2, 3, 4]


def test_person_time_is_split_at_entry_anniversaries() -> None:
    from models.gmethods import split_at_entry_anniversaries

    children = pd.DataFrame(
        {
            "person_key": ["a", "b"],
            "index_date": pd.to_datetime(["2015-01-01", "2015-01-01"]),
            "care_entry_date": pd.to_datetime(["2015-04-11", None]),  # day 100
        }
    )
    pt = pd.DataFrame(
        {
            "person_key": ["a", "a", "b"],
            "outcome": "self_harm",
            "start_day": [0, 100, 0],
            "stop_day": [100, 1000, 900],
            "looked_after": [0, 1, 0],
            "event": [0, 1, 0],
        }
    )
    rows = split_at_entry_anniversaries(pt, children, max_years=4)
    a = rows[rows["person_key"] == "a"]
    assert a["start_day"].tolist() == [0, 100, 465, 830]
    assert a["stop_day"].tolist() == [100, 465, 830, 1000]
    assert a["event"].tolist() == [0, 0, 0, 1]  # the event stays on the last piece
    assert a["years_since_entry"].tolist() == [-1, 0, 1, 2]
    assert a["looked_after_2"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert rows.loc[rows["person_key"] == "b", "years_since_entry"].tolist() == [-1]


def test_years_since_entry_figure_is_drawn_from_the_msm_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.gmethods import years_since_entry_figure

    rows = pd.DataFrame(
        {
            "outcome": "absence_rate",
            "contrast": [f"looked_after_year_since_entry_{j}" for j in range(5)],
            "method": "msm_iptw",
            "estimate": [-0.01, -0.02, -0.02, -0.03, -0.02],
            "ci_low": [-0.02, -0.03, -0.03, -0.04, -0.03],
            "ci_high": [0.0, -0.01, -0.01, -0.02, -0.01],
        }
    )
    path = tmp_path / "absence_by_years_since_entry.png"
    assert years_since_entry_figure(rows, path) and path.stat().st_size > 1000
    assert not years_since_entry_figure(rows.assign(method="gee"), tmp_path / "none.png")


def simulate_hazard(
    n: int, seed: int, log_hr: float = float(np.log(1.6))
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Children in need followed 8 years from referral (cohort.children's and
    cohort.person_time's columns that :func:`models.gmethods.hazard_msm` reads). A factor
    recorded at a yearly review (L, kept once recorded) multiplies the entry-to-care hazard by
    e and the outcome hazard by 2; care multiplies the outcome hazard by ``exp(log_hr)`` and
    does not change L, so the marginal structural HR is ``exp(log_hr)`` (up to
    non-collapsibility, small here: about 8% of children have an event per 2% yearly hazard).
    """
    rng = np.random.default_rng(seed)
    years = 8
    index = pd.Timestamp("2012-01-01") + pd.to_timedelta(rng.integers(0, 2000, n), unit="D")
    b = rng.binomial(1, 0.4, n).astype(float)
    u = rng.normal(size=n)
    exp_entry, exp_event = rng.exponential(size=n), rng.exponential(size=n)
    cum_e, cum_y = np.zeros(n), np.zeros(n)
    entry, event = np.full(n, np.nan), np.full(n, np.nan)
    recorded = np.zeros(n)
    rows = []
    for k in range(years):
        t0 = 365 * k
        rate_e = 0.08 * np.exp(0.4 * b + 1.0 * recorded)
        live = np.isnan(entry)
        reach = live & (cum_e + rate_e >= exp_entry)
        day_e = t0 + np.maximum(np.floor((exp_entry - cum_e) / rate_e * 365), 1)
        entry = np.where(reach, day_e, entry)
        cum_e = cum_e + np.where(live, rate_e, 0.0)
        base = 0.02 * np.exp(0.7 * recorded + 0.5 * b)
        cut = np.where(np.isfinite(entry) & (entry > t0) & (entry < t0 + 365), entry, np.nan)
        in_care = np.isfinite(entry) & (entry <= t0)
        pieces = (
            (np.full(n, float(t0)), np.where(np.isnan(cut), t0 + 365.0, cut), in_care),
            (cut, np.where(np.isnan(cut), np.nan, t0 + 365.0), np.ones(n, bool)),
        )
        for lo, hi, la in pieces:
            ok = np.isfinite(lo) & np.isnan(event)
            h = base * np.exp(log_hr * la)
            dt = np.where(ok, (hi - lo) / 365, 0.0)
            hit = ok & (cum_y + h * dt >= exp_event)
            day = np.minimum(lo + np.maximum(np.ceil((exp_event - cum_y) / h * 365), 1), hi)
            stop = np.where(hit, day, hi)
            rows.append(
                pd.DataFrame(
                    {
                        "c": np.flatnonzero(ok),
                        "start_day": lo[ok].astype(int),
                        "stop_day": stop[ok].astype(int),
                        "looked_after": la[ok].astype(int),
                        "event": hit[ok].astype(int),
                        "new_factors_recorded": recorded[ok],
                    }
                )
            )
            event = np.where(hit, day, event)
            cum_y = cum_y + np.where(ok & ~hit, h * dt, 0.0)
        # the review at the end of the year may record a factor
        recorded = np.maximum(recorded, rng.uniform(size=n) < 0.12 * np.exp(0.5 * u))
    keys = np.array([f"c{i}" for i in range(n)])
    pt = pd.concat(rows, ignore_index=True)
    pt = pt[pt["stop_day"] > pt["start_day"]]
    pt = (
        pt.assign(person_key=keys[pt["c"].to_numpy()], outcome="self_harm", new_protection_plan=0.0)
        .drop(columns="c")
        .sort_values(["person_key", "start_day"])
        .reset_index(drop=True)
    )
    followed = np.where(np.isfinite(event), event, 365.0 * years)
    children = pd.DataFrame(
        {
            "person_key": keys,
            "index_date": index,
            "age_at_index": rng.uniform(4, 10, n),
            "care_entry_date": index + pd.to_timedelta(entry, unit="D"),
            "followup_end": index + pd.to_timedelta(followed, unit="D"),
            "b": b,
        }
    )
    return children, pt


def test_hazard_msm_finds_the_hazard_ratio_where_baseline_weights_do_not() -> None:
    """Truth check of the IPW marginal structural hazard model over 8 simulated cohorts of
    6,000 (about 1,650 events each): with the recorded factor in the weights the mean log-HR
    bias is under 0.06 (measured 2026-12-02: +0.011, MC SE 0.018, SD/SE 0.92) and at least 6
    of 8 intervals cover; with baseline-only weights it is over 0.06 (measured +0.100: the
    confounding the weights remove). Shown failing with the weights' year factors set to 1
    (bias +0.100)."""
    from models.gmethods import hazard_msm

    truth = float(np.log(1.6))
    err: dict[tuple[str, ...], list[float]] = {CONFOUNDERS[:1]: [], (): []}
    covers = 0
    for seed in range(8):
        children, pt = simulate_hazard(6_000, 500 + seed)
        for confounders in err:
            r = hazard_msm(pt, children, children[["b"]], confounders, "self_harm")
            err[confounders].append(np.log(r.hazard_ratio) - truth)
            if confounders:
                covers += abs(np.log(r.hazard_ratio) - truth) < 1.96 * r.log_hr_se
    weighted, baseline_only = np.mean(err[CONFOUNDERS[:1]]), np.mean(err[()])
    assert abs(weighted) < 0.06, err
    assert covers >= 6, err
    assert baseline_only > 0.06, err


def test_hazard_msm_bootstrap_resamples_children_and_refits_the_weights() -> None:
    """The child-level bootstrap of the hazard MSM (``models.gmethods.hazard_msm_bootstrap``,
    option ``bootstrap_replicates``): on a simulated cohort with a common outcome (568 events),
    where the sandwich is right, the replicates centre on the estimate and their SD is the
    sandwich SE to within sampling error (measured 2026-12-02: 0.98 x over 40 replicates).
    Shown failing (2026-12-02) with every replicate drawing the same children (SD 0) and with
    the copies of a child left under its one key (the fit fails on duplicate keys)."""
    from models.gmethods import bootstrap_log_hr_se, hazard_msm, hazard_msm_bootstrap

    children, pt = simulate_hazard(2_000, 510)
    r = hazard_msm(pt, children, children[["b"]], CONFOUNDERS[:1], "self_harm")
    boot = hazard_msm_bootstrap(
        pt, children, children[["b"]], CONFOUNDERS[:1], ["self_harm"], 40, seed=3
    )["self_harm"]
    se, usable = bootstrap_log_hr_se(boot)
    assert usable == 40
    assert abs(np.mean(boot) - np.log(r.hazard_ratio)) < 0.5 * r.log_hr_se
    assert 0.75 < se / r.log_hr_se < 1.33, (se, r.log_hr_se)


def test_hazard_msm_rows_carry_the_bootstrap_interval(full_run) -> None:  # type: ignore[no-untyped-def]
    """With ``bootstrap_replicates`` the declared ``hazard_msm`` rows' intervals are the Wald
    intervals of the bootstrap SE (on the log scale) and the diagnostics say how many replicates
    were usable; without it, the sandwich's. Shown failing (2026-12-02) with the option read but
    the sandwich interval kept."""
    from ground.run_layout import RunLayout
    from models.estimators import CohortData, design_matrix, estimator_for
    from models.gmethods import bootstrap_log_hr_se, hazard_msm_bootstrap
    from models.run import load_cohort
    from models.settings import ModelSettings
    from schemas.analyses import DEFAULT_ANALYSES

    declared = next(a for a in DEFAULT_ANALYSES if a.estimator == "hazard_msm")
    cohort = CohortData(*load_cohort(RunLayout.at(full_run)))
    s = ModelSettings()
    analysis = declared.model_copy(
        update={"options": {**declared.options, "bootstrap_replicates": 12}}
    )
    booted = estimator_for(analysis, s).fit(cohort)
    plain = estimator_for(declared, s).fit(cohort)
    kids = cohort.children.reset_index(drop=True)
    x = design_matrix(kids, s.survival_covariates, s.categorical)
    replicates = hazard_msm_bootstrap(
        cohort.person_time,
        kids,
        x,
        declared.options["confounders"],
        declared.outcomes,
        12,
        s.cv_seed,
    )
    rows = booted.summary.set_index("outcome")
    sandwich = plain.summary.set_index("outcome")
    checked = 0
    for outcome in declared.outcomes:
        row = rows.loc[outcome]
        if not np.isfinite(row["estimate"]):
            continue
        se, _ = bootstrap_log_hr_se(replicates[outcome])
        log_hr = np.log(row["estimate"])
        assert row["ci_low"] == pytest.approx(np.exp(log_hr - 1.96 * se), rel=1e-9)
        assert row["ci_high"] == pytest.approx(np.exp(log_hr + 1.96 * se), rel=1e-9)
        assert row["estimate"] == pytest.approx(sandwich.loc[outcome, "estimate"], rel=1e-12)
        assert row["ci_low"] != pytest.approx(sandwich.loc[outcome, "ci_low"], rel=1e-6)
        checked += 1
    assert checked >= 2
    diag = pd.DataFrame(booted.diagnostics_)
    assert (diag["item"] == "bootstrap_replicates_usable").sum() == len(declared.outcomes)
