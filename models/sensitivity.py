"""Sensitivity to unmeasured confounding: E-values, events per covariate, negative controls.

* :func:`e_value_ci`: the E-value (VanderWeele & Ding 2017) of the confidence limit nearer the
  null: how strongly an unmeasured confounder would have to be associated with both care and
  the outcome (risk-ratio scale) to move that limit to the null. 1 when the interval already
  includes the null. Other scales are first put on the risk-ratio scale by VanderWeele & Ding's
  conversions: an odds ratio of a common outcome (15-85%) by its square root; a hazard ratio
  of a common outcome by (1 - 0.5^sqrt(HR)) / (1 - 0.5^sqrt(1/HR)); a rare outcome's OR or HR
  as it is; a mean difference standardised by the outcome's SD, d, as RR = exp(0.91 d); a risk
  difference RD with the unexposed risk p0 as (p0 + RD) / p0. E-values are for causal
  contrasts only (exposed vs unexposed); a care characteristic among the looked after or an
  effect-modification row has no "confounder of care and the outcome" to speak of.
* :func:`events_per_covariate_warning`: the rule of thumb that a regression needs about 10
  events per estimated covariate parameter (Peduzzi et al. 1995, 1996); below it the estimate
  and its interval are unreliable (the appendicitis hazard ratio 17.3, 1.0-300, from 8 events
  with 13 covariates and 22 authority strata at 5,000 children).
* :class:`SystematicError` / :func:`calibrate`: empirical calibration from negative controls
  (Schuemie et al. 2014, 2018; OHDSI's EmpiricalCalibration): the negative controls' log
  estimates b_i (true value 0) with standard errors s_i are taken as draws of
  N(mu, tau^2 + s_i^2); mu (the systematic error's mean) and tau (its spread) are fitted by
  maximum likelihood, and a new estimate (b, s) gets the calibrated interval
  b - mu +- 1.96 sqrt(tau^2 + s^2) and a calibrated p value. With one control tau cannot be
  estimated (it is set to 0 and only the shift remains); with two the maximum-likelihood tau is
  usually 0 and mu rests on two numbers: the calibrated interval is then no more than a
  statement about those controls, and :attr:`SystematicError.warning` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

Z = 1.959963984540054
# an outcome is "rare" below this share (VanderWeele & Ding's rule for the OR / HR conversions)
RARE_OUTCOME = 0.15
MIN_EVENTS_PER_COVARIATE = 10.0
RATIO_SCALES = ("hazard_ratio", "odds_ratio", "risk_ratio")


def _e_value_rr(rr: float) -> float:
    """E-value of a risk ratio: RR + sqrt(RR (RR - 1)), on the side away from the null."""
    if not np.isfinite(rr) or rr <= 0:
        return float("nan")
    rr = rr if rr >= 1 else 1 / rr
    return float(rr + np.sqrt(rr * (rr - 1)))


def _hr_to_rr_common(hr: float) -> float:
    return float((1 - 0.5 ** np.sqrt(hr)) / (1 - 0.5 ** np.sqrt(1 / hr)))


def to_risk_ratio(
    value: float,
    scale: str,
    *,
    sd: float | None = None,
    outcome_share: float | None = None,
    risk_unexposed: float | None = None,
) -> float:
    """``value`` (an estimate or a confidence limit) on the approximate risk-ratio scale;
    NaN when the scale needs what was not given (``sd`` for a mean difference,
    ``risk_unexposed`` for a risk difference)."""
    if not np.isfinite(value):
        return float("nan")
    common = outcome_share is not None and RARE_OUTCOME < outcome_share < 1 - RARE_OUTCOME
    if scale == "risk_ratio":
        return value
    if scale == "odds_ratio":
        return float(np.sqrt(value)) if common and value > 0 else value
    if scale == "hazard_ratio":
        return _hr_to_rr_common(value) if common and value > 0 else value
    if scale == "mean_difference":
        return float(np.exp(0.91 * value / sd)) if sd else float("nan")
    if scale == "risk_difference":
        if not risk_unexposed or risk_unexposed <= 0 or risk_unexposed + value <= 0:
            return float("nan")
        return float((risk_unexposed + value) / risk_unexposed)
    return float("nan")


def e_value_ci(
    estimate: float,
    ci_low: float,
    ci_high: float,
    scale: str,
    *,
    sd: float | None = None,
    outcome_share: float | None = None,
    risk_unexposed: float | None = None,
) -> float:
    """E-value of the confidence limit nearer the null (1 if the interval covers the null).

    ``sd``: the outcome's SD (mean differences). For a 0/1 outcome whose ``outcome_share`` is
    not given, ``sd`` tells whether it is common: sd^2 = p (1 - p) is above 0.1275 exactly
    when 15% < p < 85%."""
    ratio = scale in ("odds_ratio", "hazard_ratio")
    if outcome_share is None and sd and ratio and sd**2 > RARE_OUTCOME * (1 - RARE_OUTCOME):
        outcome_share = 0.5  # common: the conversion only asks whether it is
    conv = {"sd": sd, "outcome_share": outcome_share, "risk_unexposed": risk_unexposed}
    rr = to_risk_ratio(estimate, scale, **conv)
    lo = to_risk_ratio(ci_low, scale, **conv)
    hi = to_risk_ratio(ci_high, scale, **conv)
    if not (np.isfinite(rr) and np.isfinite(lo) and np.isfinite(hi)) or rr <= 0:
        return float("nan")
    if lo <= 1 <= hi:
        return 1.0
    return _e_value_rr(lo if rr > 1 else hi)


def e_value_point(
    estimate: float,
    scale: str,
    *,
    sd: float | None = None,
    outcome_share: float | None = None,
    risk_unexposed: float | None = None,
) -> float:
    """E-value of the point estimate (same conversions as :func:`e_value_ci`)."""
    rr = to_risk_ratio(
        estimate, scale, sd=sd, outcome_share=outcome_share, risk_unexposed=risk_unexposed
    )
    return _e_value_rr(rr)


def events_per_covariate_warning(
    events: int, covariates: int, strata: int = 0, minimum: float = MIN_EVENTS_PER_COVARIATE
) -> str:
    """A warning when ``events`` / ``covariates`` is below ``minimum`` (10, the usual rule of
    thumb), naming the counts; empty otherwise. ``strata``: levels of a stratification
    variable (each has its own baseline; a stratum without events adds nothing)."""
    if covariates <= 0:
        return ""
    epv = events / covariates
    if epv >= minimum:
        return ""
    where = f" and {strata} strata" if strata else ""
    return (
        f"few events per covariate: {events} events for {covariates} covariates{where} "
        f"({epv:.1f} per covariate, rule of thumb at least {minimum:g}): the estimate and its "
        "interval are unreliable"
    )


# ---- empirical calibration from negative controls ---------------------------------------------


@dataclass(frozen=True)
class SystematicError:
    """The systematic-error distribution N(mean, sd^2) on the log scale fitted to ``n``
    negative-control estimates, and what the fit can support (``warning``)."""

    mean: float
    sd: float
    n: int
    warning: str = ""


def fit_systematic_error(log_estimates: np.ndarray, standard_errors: np.ndarray) -> SystematicError:
    """Maximum-likelihood fit of b_i ~ N(mu, tau^2 + s_i^2) to negative-control estimates
    (log scale, true value 0). Non-finite rows are dropped."""
    b = np.asarray(log_estimates, float)
    s = np.asarray(standard_errors, float)
    ok = np.isfinite(b) & np.isfinite(s) & (s > 0)
    b, s = b[ok], s[ok]
    n = len(b)
    if n == 0:
        raise ValueError("no usable negative-control estimate to calibrate with")
    if n == 1:
        return SystematicError(
            float(b[0]),
            0.0,
            1,
            "one negative control: the systematic error's spread cannot be estimated (set to "
            "0) and its mean is that control's estimate, with its sampling error; calibrated "
            "intervals are shifted, not widened",
        )

    def nll(p: np.ndarray) -> float:
        v = np.exp(2 * p[1]) + s**2
        return float(0.5 * np.sum(np.log(v) + (b - p[0]) ** 2 / v))

    best = optimize.minimize(nll, x0=np.array([b.mean(), np.log(max(b.std(), 0.01))]))
    mu, tau = float(best.x[0]), float(np.exp(best.x[1]))
    tau = 0.0 if tau < 1e-4 else tau
    warning = ""
    if n < 5:
        warning = (
            f"{n} negative controls: the systematic-error distribution rests on {n} numbers "
            "(OHDSI uses dozens); read the calibrated interval as a statement about these "
            "controls only"
        )
    return SystematicError(mu, tau, n, warning)


def calibrate(
    log_estimate: float, standard_error: float, error: SystematicError
) -> tuple[float, float, float, float]:
    """Calibrated (estimate, ci_low, ci_high, p) on the log scale: the estimate less the
    systematic error's mean, the variance plus its spread's (Schuemie et al. 2018, assuming
    the error does not depend on the true effect, all one can assume with null controls)."""
    centre = log_estimate - error.mean
    se = float(np.sqrt(standard_error**2 + error.sd**2))
    p = float(2 * stats.norm.sf(abs(centre / se))) if se > 0 else float("nan")
    return centre, centre - Z * se, centre + Z * se, p


def calibrated_ratios(
    estimates: pd.DataFrame, negative_controls: pd.DataFrame
) -> tuple[pd.DataFrame, SystematicError]:
    """Empirically calibrated intervals for ratio-scale ``estimates`` (columns estimate,
    ci_low, ci_high; SE from the interval's log width) from ``negative_controls`` (the same
    columns, true ratio 1). Adds ``calibrated_estimate``, ``calibrated_ci_low``,
    ``calibrated_ci_high``, ``calibrated_p``."""

    def logs(d: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.log(d["ci_low"].to_numpy(float)), np.log(d["ci_high"].to_numpy(float))
        return np.log(d["estimate"].to_numpy(float)), (hi - lo) / (2 * Z)

    err = fit_systematic_error(*logs(negative_controls))
    b, s = logs(estimates)
    cal = np.array([calibrate(bi, si, err) for bi, si in zip(b, s, strict=True)]).reshape(-1, 4)
    out = estimates.copy()
    out["calibrated_estimate"] = np.exp(cal[:, 0])
    out["calibrated_ci_low"] = np.exp(cal[:, 1])
    out["calibrated_ci_high"] = np.exp(cal[:, 2])
    out["calibrated_p"] = cal[:, 3]
    return out, err


def beside_negative_controls(
    estimates: pd.DataFrame, negative_controls: tuple[str, ...], method: str
) -> pd.DataFrame:
    """Each main estimate of ``method`` (one row per outcome and contrast) with the negative
    control's estimate from the same method and contrast beside it (``nc_*`` columns; one row
    per main estimate and control)."""
    e = estimates[estimates["method"] == method]
    main = e[~e["outcome"].isin(negative_controls)]
    nc = e[e["outcome"].isin(negative_controls)][
        ["contrast", "outcome", "estimate", "ci_low", "ci_high"]
    ].rename(
        columns={
            "outcome": "nc_outcome",
            "estimate": "nc_estimate",
            "ci_low": "nc_ci_low",
            "ci_high": "nc_ci_high",
        }
    )
    return main.merge(nc, on="contrast", how="left")
