"""KS4 "enter care now versus not now": the per-trial intention-to-treat contrast of the
sequential trials (``SequentialTrialEmulation(comparator="not_now")``, analysis
``ks4_enter_now_vs_not_now``) against a known truth, and the world's truth of it
(synthetic_data/entry_trials.py). docs/gmethods.md section 6.

The estimator checks simulate the cohort tables directly (as tests/test_gmethods.py does):
children in need whose yearly entry hazard rises steeply with the factors recorded since the
referral. Each entrant's "not now" outcome is simulated with the same random numbers, entry
suppressed in its trial's year and a fresh threshold for a later entry (averaged over
replicates), so the intention-to-treat truth is known. Censoring comparators at a later entry
(the "never" comparator, the planted error) answers another question and misses it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.gmethods import (
    SequentialTrialEmulation,
    entry_design,
    ks4_year_start_day,
    trial_periods,
)

CONFOUNDERS = ("new_factors_recorded", "new_protection_plan")
CARE_EFFECT = 6.0  # KS4 points for care begun before year 11


def _course(
    b: np.ndarray,
    u: np.ndarray,
    horizon: np.ndarray,
    draws: np.ndarray,
    block: np.ndarray,
    threshold: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Entry day (NaN: none before year 11) and the new factor by year 11, with entry
    impossible in the years up to ``block`` and otherwise when the cumulative hazard (from the
    first year after ``block``) reaches ``threshold``; ``draws`` the yearly common random
    numbers of the new factor. Also the factor as of each year's end."""
    n = b.size
    cum = np.zeros(n)
    entry = np.full(n, np.nan)
    factors = np.zeros(n)
    history = []
    for k in range(draws.shape[0]):
        start, end = 365 * k, np.minimum(365 * (k + 1), horizon)
        live = (start < horizon) & np.isnan(entry) & (k > block)
        rate = 0.25 * np.exp(0.5 * b + 1.0 * factors)
        years = np.clip(end - start, 0, None) / 365.25
        new_cum = cum + np.where(live, rate * years, 0.0)
        enters = live & (new_cum >= threshold)
        frac = np.where(enters, (threshold - cum) / np.where(enters, rate * years, 1.0), 0.0)
        entry = np.where(enters, start + np.ceil(frac * (end - start)).clip(1), entry)
        cum = new_cum
        in_care = ~np.isnan(entry) & (entry <= end)
        p_new = 0.2 * np.exp(0.5 * u - 0.5)
        new = draws[k] < np.where(in_care, 0.5 * p_new, p_new)
        factors = np.maximum(factors, new & (end < horizon))
        history.append(factors.copy())
    return entry, factors, history


def simulate_itt(
    n: int, seed: int, replicates: int = 20
) -> tuple[pd.DataFrame, pd.DataFrame, float, float]:
    """Children, person_time, the intention-to-treat truth (entrants' mean of Y(now) - Y(not
    now)) and the 'never' truth (entrants' mean of Y(now) - Y(never before year 11))."""
    rng = np.random.default_rng(seed)
    index = pd.Timestamp("2012-01-01") + pd.to_timedelta(rng.integers(0, 3000, n), unit="D")
    age = rng.uniform(4.0, 13.5, n)
    children = pd.DataFrame(
        {"person_key": [f"p{i}" for i in range(n)], "index_date": index, "age_at_index": age}
    )
    horizon = ks4_year_start_day(children)
    b = rng.binomial(1, 0.4, n).astype(float)
    u = rng.normal(size=n)
    draws = rng.uniform(size=(int(np.ceil(horizon.max() / 365)) + 1, n))
    noise = rng.normal(0, 8, n)

    def ks4(entry: np.ndarray, factors: np.ndarray) -> np.ndarray:
        return 50 - 4 * b - 3 * u - 4 * factors + CARE_EFFECT * ~np.isnan(entry) + noise

    entry, factors, history = _course(b, u, horizon, draws, np.full(n, -1), rng.exponential(size=n))
    y = ks4(entry, factors)
    treated = ~np.isnan(entry)
    # each entrant's trial (the estimator's: entry day in (365k, 365(k+1)]) and its "not now"
    trial = np.where(treated, np.ceil(np.nan_to_num(entry) / 365) - 1, 99)
    not_now = np.zeros(n)
    for _ in range(replicates):
        e, f, _h = _course(b, u, horizon, draws, trial, rng.exponential(size=n))
        not_now += ks4(e, f) / replicates
    never_e, never_f, _h = _course(b, u, horizon, draws, np.full(n, 10**6), np.ones(n))
    y_never = ks4(never_e, never_f)
    children = children.assign(
        care_entry_date=index + pd.to_timedelta(entry, unit="D"),
        ks4_care_group=np.where(treated, "short", "none"),
        ks4_score=y,
        b=b,
    )
    pt = pd.concat(
        [pd.DataFrame({"person_key": children["person_key"], "start_day": 0, "l": 0.0})]
        + [
            pd.DataFrame(
                {"person_key": children["person_key"], "start_day": 365 * (k + 1) + 1, "l": h}
            )
            for k, h in enumerate(history)
        ],
        ignore_index=True,
    )
    pt = pt.assign(outcome="self_harm", new_factors_recorded=pt["l"], new_protection_plan=0.0).drop(
        columns="l"
    )
    itt = float(np.mean(y[treated] - not_now[treated]))
    never = float(np.mean(y[treated] - y_never[treated]))
    return children, pt, itt, never


def fit(
    children: pd.DataFrame, pt: pd.DataFrame, comparator: str, augment: bool = False
) -> tuple[float, float]:
    periods = trial_periods(children, pt, CONFOUNDERS)
    r = SequentialTrialEmulation(comparator=comparator, augment=augment).fit(
        periods, children[["b"]], CONFOUNDERS, {"y": children["ks4_score"].to_numpy()}
    )["y"]
    return r.estimate, r.se


@pytest.mark.parametrize("augment", [False, True], ids=["weighting", "doubly_robust"])
def test_not_now_trials_find_the_itt_truth(augment: bool) -> None:
    """One large simulated cohort: the not-now trials (weighting, and doubly robust as
    declared) are within 2.5 SE of the intention-to-treat truth, which is far from the 'never'
    truth here (so dropping later entrants from the comparators, or weighting them by their
    chance of staying out, fails: docs/gmethods.md section 6 gives the planted errors and what
    they gave)."""
    children, pt, itt, never = simulate_itt(12_000, 11)
    est, se = fit(children, pt, "not_now", augment)
    assert abs(est - itt) < 2.5 * se, (est, se, itt)
    assert 0.05 < se < 0.5
    assert never - itt > 10 * se, (never, itt, se)  # the two estimands are far apart here


@pytest.mark.parametrize("augment", [False, True], ids=["weighting", "doubly_robust"])
def test_not_now_sandwich_se_matches_the_spread_over_seeds(augment: bool) -> None:
    """Over 15 simulated cohorts of 2,500 children: mean bias within 3 Monte Carlo SEs of zero,
    SD of the estimates' errors over their mean sandwich SE between 0.7 and 1.4, coverage at
    least 80%; the weighting form and the doubly robust one (its analytic SE)."""
    err, ses = [], []
    for seed in range(15):
        children, pt, itt, _never = simulate_itt(2_500, 200 + seed, replicates=10)
        e, s = fit(children, pt, "not_now", augment)
        err.append(e - itt)
        ses.append(s)
    err_a, se_a = np.asarray(err), np.asarray(ses)
    assert abs(err_a.mean()) < 3 * err_a.std(ddof=1) / np.sqrt(err_a.size), err_a
    assert 0.7 < err_a.std(ddof=1) / se_a.mean() < 1.4, (err_a.std(ddof=1), se_a.mean())
    assert np.mean(np.abs(err_a) < 1.96 * se_a) >= 0.8


def _comparator_weights(periods: pd.DataFrame, p: np.ndarray, comparator: str) -> np.ndarray:
    """Written out from the definitions: not now, each non-entrant row's ATT odds of its own
    year; never, a never-entrant's row ``p_k / prod_{j >= k} (1 - p_j)`` over its own rows."""
    if comparator == "not_now":
        return np.where(periods["entered"].to_numpy() == 0, p / (1 - p), 0.0)
    child, period = periods["child"].to_numpy(), periods["period"].to_numpy()
    later = (child[:, None] == child[None, :]) & (period[None, :] >= period[:, None])
    stay_out = np.exp(later @ np.log(1 - p))
    return np.where(periods["control"].to_numpy() == 1, p / stay_out, 0.0)


def _stacked_equations(
    theta: np.ndarray,
    x: np.ndarray,
    periods: pd.DataFrame,
    y_child: np.ndarray,
    ok_trials: np.ndarray,
    n_children: int,
    comparator: str,
) -> np.ndarray:
    """The doubly robust trials' estimating functions, one row per child, at ``theta`` =
    (entry coefficients beta, outcome coefficients gamma, each usable trial's weighted
    comparator mean of the residual m_k, the pooled contrast), written out from the
    definitions (docs/gmethods.md section 6b), independently of models/gmethods.py."""
    q, n_trials = x.shape[1], ok_trials.size
    beta, gamma = theta[:q], theta[q : 2 * q]
    m, att = theta[2 * q : 2 * q + n_trials], theta[-1]
    a = periods["entered"].to_numpy()
    child, trial = periods["child"].to_numpy(), periods["period"].to_numpy()
    hazard = np.exp(x @ beta + np.log(periods["years"].to_numpy()))
    p = 1 - np.exp(-hazard)
    entry_score = x * (hazard * (a / p - 1))[:, None]  # cloglog score
    w = _comparator_weights(periods, p, comparator)
    resid = y_child[child] - x @ gamma
    outcome_score = x * (w * resid)[:, None]  # the comparators' weighted least squares
    in_trial = trial[:, None] == ok_trials[None, :]
    mean_score = in_trial * w[:, None] * (resid[:, None] - m[None, :])
    m_row = (in_trial * m[None, :]).sum(axis=1)
    contrast = np.where(in_trial.any(axis=1) & (a == 1), resid - m_row - att, 0.0)
    rows = np.c_[entry_score, outcome_score, mean_score, contrast]
    out = np.zeros((n_children, rows.shape[1]))
    np.add.at(out, child, rows)
    return out


@pytest.mark.parametrize("comparator", ["not_now", "never"])
def test_doubly_robust_sandwich_is_the_stacked_equations_sandwich(comparator: str) -> None:
    """The doubly robust not-now SE is the child-clustered M-estimation sandwich of the stacked
    estimating equations (entry model, outcome model, per-trial comparator means, contrast):
    here with the bread by numerical differentiation of the equations written out in this file,
    on a small cohort (400 children); the not-now trials (declared) and the 'never' ones. The
    estimate solves the equations. Planted errors (docs/gmethods.md section 6b): the outcome
    model's equations left out, or the meat summed per person-period instead of per child,
    each move the SE by more than the tolerance."""
    children, pt, _itt, _never = simulate_itt(400, 5, replicates=2)
    periods = trial_periods(children, pt, CONFOUNDERS)
    y_child = children["ks4_score"].to_numpy()
    fitter = SequentialTrialEmulation(comparator=comparator, augment=True)
    r = fitter.fit(periods, children[["b"]], CONFOUNDERS, {"y": y_child})["y"]
    x, _columns = entry_design(periods, children[["b"]], CONFOUNDERS)
    a, trial = periods["entered"].to_numpy(), periods["period"].to_numpy()
    # the estimate: beta from the fit, gamma, m_k and the contrast solved from the equations
    beta = fitter.coef_.to_numpy()
    p = 1 - np.exp(-np.exp(x @ beta + np.log(periods["years"].to_numpy())))
    w = _comparator_weights(periods, p, comparator)
    ok_trials = np.array(
        [k for k in np.unique(trial) if a[trial == k].any() and w[trial == k].any()]
    )
    assert ok_trials.size >= 3
    y = y_child[periods["child"].to_numpy()]
    gamma = np.linalg.solve((x * w[:, None]).T @ x, (x * w[:, None]).T @ y)
    resid = y - x @ gamma
    m = np.array([np.average(resid[trial == k], weights=w[trial == k]) for k in ok_trials])
    entrant = (a == 1) & np.isin(trial, ok_trials)
    att = np.mean(resid[entrant] - m[np.searchsorted(ok_trials, trial[entrant])])
    assert r.estimate == pytest.approx(att, abs=1e-6)
    theta = np.r_[beta, gamma, m, att]
    args = (x, periods, y_child, ok_trials, len(children), comparator)
    psi = _stacked_equations(theta, *args)
    assert np.abs(psi.sum(axis=0)).max() < 1e-4 * np.abs(psi).sum(axis=0).max()
    # bread: minus the Jacobian of the summed equations (central differences); meat by child
    jac = np.empty((theta.size, theta.size))
    for j in range(theta.size):
        step = 1e-5 * max(1.0, abs(theta[j]))
        up, down = theta.copy(), theta.copy()
        up[j] += step
        down[j] -= step
        jac[:, j] = (
            _stacked_equations(up, *args).sum(axis=0) - _stacked_equations(down, *args).sum(axis=0)
        ) / (2 * step)
    bread_inv = np.linalg.inv(-jac)
    covariance = bread_inv @ (psi.T @ psi) @ bread_inv.T
    expected = float(np.sqrt(covariance[-1, -1]))
    assert r.se == pytest.approx(expected, rel=1e-6), (r.se, expected)


def test_unknown_comparator_is_refused() -> None:
    with pytest.raises(ValueError, match="comparator must be one of"):
        SequentialTrialEmulation(comparator="later")


# ---- the world's truth ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tvc_world():  # type: ignore[no-untyped-def]
    from synthetic_data.scenario import load_scenario
    from synthetic_data.world import build_world

    sc = load_scenario("time_varying_confounding")
    return build_world(4_000, sc, 3, with_health=False), sc


def test_world_replay_is_the_worlds_own_draws(tvc_world) -> None:  # type: ignore[no-untyped-def]
    """The counterfactual replays after_referral's draws: with entry suppressed in every year
    it gives exactly the world's never-in-care onsets; the world's own care course gives its
    own KS4 effect and level 2 probability; a care history shifted by nothing is unchanged."""
    from synthetic_data import entry_trials as et

    w, sc = tvc_world
    has = np.flatnonzero(w.ref1 >= 0)
    entry, onset = et.not_now_counterfactual(
        w, sc, 3, has, np.full(has.size, et.NO_BLOCK), np.ones(has.size)
    )
    assert (entry == et.NEVER).all()
    assert np.array_equal(onset, w.onset_no_care[has])
    # with nothing suppressed and the world's own entry thresholds (care()'s draws, replayed)
    # it gives the world's entries and factual onsets (care's effect on new adversity included)
    from synthetic_data.world import process_rng

    care_rng = process_rng(3, 2)
    care_rng.integers(2**32)  # the authorities' effects' seed
    exp1 = care_rng.exponential(1.0, w.n)
    same_day = care_rng.random(w.n) < 0.1 * (1 - np.exp(-w.care_entry_rate))
    threshold = np.where(same_day, 0.0, exp1)[has]
    entry, onset = et.not_now_counterfactual(w, sc, 3, has, np.full(has.size, -1), threshold)
    assert np.array_equal(onset, w.onset[has])
    entrant = w.first_entry[has] >= 0
    assert np.array_equal(entry[entrant], w.first_entry[has][entrant])
    everyone = np.arange(w.n)
    got = et.ks4_under(w, sc, everyone, et.factual_course(w, everyone))
    assert np.array_equal(got["ks4_latent_effect"], w.ks4_effect)
    assert np.array_equal(got["ks4_level2_inclusive"], w.level2_p1)
    ever = np.flatnonzero(w.first_entry >= 0)
    same = et.shifted_course(w, ever, w.first_entry[ever], w.onset[ever])
    assert np.array_equal(same.days_before_ks4, w.care_days_before_ks4[ever])
    assert np.array_equal(same.moves_before_ks4, w.moves_before_ks4[ever])


def test_world_not_now_truth(tvc_world) -> None:  # type: ignore[no-untyped-def]
    """Every entrant's counterfactual entry comes after its trial's year; some enter later
    (the contrast is not 'never'); the truth's Monte Carlo error is small beside an estimate's
    SE (about 0.7 points at 20,000 children)."""
    from synthetic_data import entry_trials as et

    w, sc = tvc_world
    ks4_has = np.ones(w.n, bool)
    who = et.entrants(w, ks4_has)
    trial = (w.first_entry[who] - w.ref1[who]) // et.REVIEW_DAYS
    rng = np.random.default_rng(1)
    entry, onset = et.not_now_counterfactual(w, sc, 3, who, trial, rng.exponential(size=who.size))
    later = entry < et.NEVER
    assert (entry[later] >= w.ref1[who][later] + (trial[later] + 1) * et.REVIEW_DAYS).all()
    # the child's own care, moved to the later entry: no more days before year 11 than remain
    course = et.shifted_course(w, who, entry, onset)
    room = np.clip(w.ks4_start[who] - np.minimum(entry, w.ks4_start[who]), 0, None)
    assert (course.days_before_ks4 <= room).all()
    assert (course.days_before_ks4 <= w.care_days_before_ks4[who]).all()
    assert (course.days_before_ks4[~later] == 0).all()
    t = et.entry_trial_truth(w, sc, 3, ks4_has)
    assert 0.3 < t.later_entry_share.mean() < 0.95
    rows = {r["outcome"]: r for r in et.entry_trial_estimands(t)}
    ks4 = rows["ks4_score"]
    assert ks4["contrast"] == "enter_now_vs_not_now" and ks4["entrants"] == who.size
    assert float(ks4["monte_carlo_se"]) < 0.1  # type: ignore[arg-type]
    per_trial = ks4["trials"]
    assert sum(p["entrants"] for p in per_trial) == who.size  # type: ignore[union-attr]


def test_declared_not_now_rows_and_protocol_in_a_whole_run(full_run) -> None:  # type: ignore[no-untyped-def]
    """The declared ``ks4_enter_now_vs_not_now`` analysis (doubly robust) writes its rows,
    apart from the 'never' trials', and the report states its own protocol (strategies,
    follow-up, the outcome model)."""
    import html

    est = pd.read_csv(full_run / "results" / "estimates.csv")
    itt = est[est["method"] == "trial_emulation_itt_dr"]
    assert set(itt["outcome"]) == {"ks4_score", "ks4_level2_inclusive"}
    assert (itt["contrast"] == "enter_now_vs_not_now").all()
    assert itt["estimate"].notna().all() and (itt["ci_low"] < itt["ci_high"]).all()
    page = html.unescape((full_run / "report.html").read_text(encoding="utf-8"))
    assert "enter now versus not now" in page
    assert "no comparator is censored when it enters care later" in page
    assert "the entry model and the outcome model included" in page
