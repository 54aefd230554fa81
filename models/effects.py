"""Effects of an exposure on an education outcome: unadjusted, regression, IPW and AIPW.

Every method targets the average effect in the exposed (ATT), the estimand the synthetic truth
reports. Confidence intervals: robust (HC1) sandwich for regression and weighted regression,
influence-function standard errors for AIPW and g-computation (nuisance models treated as
fixed), all Wald 95%.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats

Method = Literal["unadjusted", "regression", "ipw", "aipw"]
Z = 1.959963984540054


@dataclass
class Estimate:
    outcome: str
    contrast: str
    method: str
    scale: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n_exposed: int
    n_unexposed: int
    warning: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


def _wald(est: float, se: float) -> tuple[float, float, float]:
    if not np.isfinite(se) or se <= 0:
        return float("nan"), float("nan"), float("nan")
    return est - Z * se, est + Z * se, float(2 * stats.norm.sf(abs(est / se)))


class ExposureEffectFitter:
    """ATT of a binary exposure on a continuous or binary outcome.

    Parameters
    ----------
    method
        ``unadjusted``, ``regression`` (OLS, or logistic g-computation for binary outcomes),
        ``ipw`` (ATT-weighted difference) or ``aipw`` (doubly robust ATT).
    binary
        Outcome is 0/1: the effect is a risk difference.
    """

    def __init__(self, method: Method = "aipw", binary: bool = False) -> None:
        if method not in ("unadjusted", "regression", "ipw", "aipw"):
            raise ValueError(f"unknown method {method!r}")
        self.method = method
        self.binary = binary
        self.warnings_: list[str] = []

    def fit(
        self,
        y: np.ndarray,
        t: np.ndarray,
        x: pd.DataFrame | None = None,
        weights: np.ndarray | None = None,
    ) -> ExposureEffectFitter:
        y = np.asarray(y, float)
        t = np.asarray(t, int)
        n1, n0 = int(t.sum()), int((1 - t).sum())
        self.n_exposed_, self.n_unexposed_ = n1, n0
        if n1 == 0 or n0 == 0:
            raise ValueError("need exposed and unexposed children")
        if self.binary and (
            y[t == 1].min() == y[t == 1].max() or y[t == 0].min() == y[t == 0].max()
        ):
            self.warnings_.append("outcome constant within a group: no events or all events")
        xm = x.to_numpy(float) if x is not None else np.zeros((len(y), 0))
        if self.method == "unadjusted":
            self._ols(y, np.c_[np.ones_like(y), t])
        elif self.method == "regression" and not self.binary:
            self._ols(y, np.c_[np.ones_like(y), t, xm])
        elif self.method == "regression":
            self._gcomp(y, t, xm)
        elif self.method == "ipw":
            if weights is None:
                raise ValueError("ipw needs weights")
            w = np.asarray(weights, float)
            keep = w > 0
            self._ols(y[keep], np.c_[np.ones(keep.sum()), t[keep]], w[keep])
        else:
            if weights is None:
                raise ValueError("aipw needs weights (propensity-based)")
            self._aipw(y, t, xm, np.asarray(weights, float))
        return self

    def _ols(self, y: np.ndarray, design: np.ndarray, w: np.ndarray | None = None) -> None:
        model = sm.WLS(y, design, weights=w) if w is not None else sm.OLS(y, design)
        res = model.fit(cov_type="HC1")
        self.estimate_ = float(res.params[1])
        self.se_ = float(res.bse[1])

    def _outcome_model(self, y: np.ndarray, xm: np.ndarray) -> Any:
        design = np.c_[np.ones(len(y)), xm]
        if not self.binary:
            return sm.OLS(y, design).fit()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = sm.Logit(y, design).fit(disp=0, maxiter=200)
            except Exception as exc:  # perfect separation and friends: fall back to ridge
                self.warnings_.append(
                    f"logistic outcome model failed ({type(exc).__name__}); penalised fit used"
                )
                res = sm.Logit(y, design).fit_regularized(disp=0, alpha=1.0)
        for w in caught:
            msg = str(w.message).lower()
            if "converg" in msg or "separation" in msg:
                self.warnings_.append("outcome model: " + str(w.message).split("\n")[0])
        return res

    def _predict(self, res: Any, xm: np.ndarray) -> np.ndarray:
        return np.asarray(res.predict(np.c_[np.ones(len(xm)), xm]))

    def _gcomp(self, y: np.ndarray, t: np.ndarray, xm: np.ndarray) -> None:
        """Logistic g-computation: ATT = mean over exposed of p(1, x) - p(0, x)."""
        res = self._outcome_model(y, np.c_[t, xm])
        x1 = np.c_[np.ones(len(y)), xm][t == 1]
        p1 = self._predict(res, np.c_[np.ones(len(x1)), x1[:, 1:]])
        p0 = self._predict(res, np.c_[np.zeros(len(x1)), x1[:, 1:]])
        self.estimate_ = float(np.mean(p1 - p0))
        self.odds_ratio_ = float(np.exp(res.params[1]))
        try:
            se_b = float(res.bse[1])
            self.odds_ratio_ci_ = (
                float(np.exp(res.params[1] - Z * se_b)),
                float(np.exp(res.params[1] + Z * se_b)),
            )
            self.odds_ratio_p_ = float(res.pvalues[1])
        except Exception:
            self.odds_ratio_ci_ = (float("nan"), float("nan"))
            self.odds_ratio_p_ = float("nan")
        # delta method over all outcome-model coefficients + sampling of the exposed's covariates
        d1 = np.c_[np.ones(len(x1)), np.ones(len(x1)), x1[:, 1:]]
        d0 = np.c_[np.ones(len(x1)), np.zeros(len(x1)), x1[:, 1:]]
        grad = (d1 * (p1 * (1 - p1))[:, None] - d0 * (p0 * (1 - p0))[:, None]).mean(axis=0)
        try:
            cov = np.asarray(res.cov_params())
            var_coef = float(grad @ cov @ grad)
        except Exception:
            var_coef = float("nan")
            self.warnings_.append("outcome-model covariance unavailable")
        var_mean = np.var(p1 - p0, ddof=1) / max(len(p1), 1)
        self.se_ = float(np.sqrt(var_mean + var_coef))

    def _aipw(self, y: np.ndarray, t: np.ndarray, xm: np.ndarray, w: np.ndarray) -> None:
        """Doubly robust ATT (Moodie et al.): outcome model fitted in the unexposed."""
        keep = w > 0
        y, t, xm, w = y[keep], t[keep], xm[keep], w[keep]
        res = self._outcome_model(y[t == 0], xm[t == 0])
        m0 = self._predict(res, xm)
        resid = y - m0
        n1 = t.sum()
        att = (np.sum(t * resid) - np.sum((1 - t) * w * resid)) / n1
        psi = (t * (resid - att) - (1 - t) * w * resid) / (n1 / len(y))
        self.estimate_ = float(att)
        self.se_ = float(np.sqrt(np.var(psi, ddof=1) / len(y)))

    def result(self, outcome: str, contrast: str, scale: str) -> Estimate:
        lo, hi, p = _wald(self.estimate_, self.se_)
        return Estimate(
            outcome,
            contrast,
            self.method,
            scale,
            self.estimate_,
            lo,
            hi,
            p,
            self.n_exposed_,
            self.n_unexposed_,
            "; ".join(self.warnings_),
        )

    @property
    def summary(self) -> pd.DataFrame:
        lo, hi, p = _wald(self.estimate_, self.se_)
        return pd.DataFrame(
            [
                {
                    "method": self.method,
                    "estimate": self.estimate_,
                    "se": self.se_,
                    "ci_low": lo,
                    "ci_high": hi,
                    "p_value": p,
                }
            ]
        )

    def print_summary(self) -> str:
        return self.summary.to_string(index=False)


def e_value(
    estimate: float, ci_low: float, ci_high: float, scale: str, sd: float | None = None
) -> float:
    """E-value (VanderWeele & Ding) of a point estimate on a ratio scale (RR / HR / OR), or a
    mean difference converted with RR ~ exp(0.91 * d)."""
    if scale == "mean_difference":
        if not sd:
            return float("nan")
        rr = float(np.exp(0.91 * estimate / sd))
    elif scale in ("hazard_ratio", "odds_ratio", "risk_ratio"):
        rr = estimate
    else:
        return float("nan")
    if not np.isfinite(rr) or rr <= 0:
        return float("nan")
    rr = rr if rr >= 1 else 1 / rr
    return float(rr + np.sqrt(rr * (rr - 1)))
