"""Rubin's rules: pool the estimates of several analyses of multiply-imputed data.

Used for multiple linkage imputation (:mod:`linkage.imputation`): the cohort is derived and
every model fitted once per drawn link set, and each estimate is pooled over the draws.

For one estimate over ``M`` draws with point estimates ``q_m`` and standard errors ``s_m``
(on the scale the model is fitted on: log for ratios):

* pooled estimate ``q = mean(q_m)``;
* within-draw variance ``W = mean(s_m^2)``; between-draw variance ``B = var(q_m)`` (``M - 1``
  in the denominator);
* total variance ``T = W + (1 + 1/M) B``;
* Rubin's (1987) degrees of freedom ``nu = (M - 1) (1 + 1 / r)^2`` with
  ``r = (1 + 1/M) B / W``; the interval is ``q -/+ t_{nu, 0.975} sqrt(T)``;
* the share of the variance due to linkage, ``(1 + 1/M) B / T`` (the fraction of missing
  information without its small-sample correction).

A draw's standard error is read from its 95% interval (``(high - low) / (2 x 1.96)`` on the
fitted scale), so any estimator whose interval is symmetric on that scale pools correctly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ground.errors import CohortError

RATIO_SCALES = ("hazard_ratio", "odds_ratio", "rate_ratio", "risk_ratio")
KEYS = ["outcome", "contrast", "method", "scale"]
Z975 = float(stats.norm.ppf(0.975))


class PoolingError(CohortError):
    """Estimates that cannot be pooled (fewer than two draws, missing columns)."""


def _to_fitted_scale(est: pd.DataFrame) -> pd.DataFrame:
    """Point estimate and standard error on the fitted scale (log for ratios)."""
    ratio = est["scale"].isin(RATIO_SCALES).to_numpy()
    q = est["estimate"].to_numpy(dtype=float)
    lo = est["ci_low"].to_numpy(dtype=float)
    hi = est["ci_high"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(ratio, np.log(q), q)
        width = np.where(ratio, np.log(hi) - np.log(lo), hi - lo)
    return est[KEYS].assign(q=q, se=width / (2 * Z975))


def rubin_pool(draws: Sequence[pd.DataFrame], *, include_between: bool = True) -> pd.DataFrame:
    """Pool each estimate (outcome, contrast, method, scale) over the draws' estimates tables.

    Returns one row per estimate: ``estimate, ci_low, ci_high`` (on the table's scale),
    ``q, within_var, between_var, total_var, df, linkage_share, draws``. An estimate that
    failed in some draws is pooled over the draws where it has a finite interval, and not at
    all below two. ``include_between=False`` drops the between-draw variance (for tests that
    show what ignoring it does: intervals too narrow)."""
    if len(draws) < 2:
        raise PoolingError(f"pooling needs at least 2 draws, got {len(draws)}: run more link draws")
    for i, d in enumerate(draws):
        missing = [c for c in (*KEYS, "estimate", "ci_low", "ci_high") if c not in d.columns]
        if missing:
            raise PoolingError(f"the estimates table of draw {i} lacks column(s) {missing}")
    long = pd.concat(
        [_to_fitted_scale(d).assign(draw=i) for i, d in enumerate(draws)], ignore_index=True
    )
    long = long[np.isfinite(long["q"]) & np.isfinite(long["se"])].assign(var=lambda d: d["se"] ** 2)
    g = long.groupby(KEYS, sort=False)
    out = g.agg(
        draws=("q", "size"), q=("q", "mean"), within_var=("var", "mean"), b=("q", "var")
    ).reset_index()
    out = out[out["draws"] >= 2].reset_index(drop=True)
    if out.empty:
        return out
    m = out["draws"].to_numpy(dtype=float)
    w = out["within_var"].to_numpy()
    b = out["b"].to_numpy() if include_between else np.zeros(len(out))
    t = w + (1 + 1 / m) * b
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(w > 0, (1 + 1 / m) * b / w, np.inf)
        df = np.where(r > 0, (m - 1) * (1 + 1 / r) ** 2, np.inf)
        crit = np.where(np.isfinite(df), stats.t.ppf(0.975, np.where(np.isfinite(df), df, 1)), Z975)
        share = np.where(t > 0, (1 + 1 / m) * b / t, 0.0)
    half = crit * np.sqrt(t)
    q = out["q"].to_numpy()
    out = out.drop(columns=["b"]).assign(
        low_q=q - half,
        high_q=q + half,
        between_var=b,
        total_var=t,
        df=df,
        linkage_share=share,
    )
    ratio = out["scale"].isin(RATIO_SCALES)
    for col, src in (("estimate", "q"), ("ci_low", "low_q"), ("ci_high", "high_q")):
        out[col] = np.where(ratio, np.exp(out[src]), out[src])
    return out.drop(columns=["low_q", "high_q"])
