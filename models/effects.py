"""Effects of an exposure on an education outcome: unadjusted, regression, IPW and AIPW.

Every method targets the average effect in the exposed (ATT), the estimand the synthetic truth
reports. ``regression`` is regression imputation for the ATT (an outcome model fitted in the
unexposed predicts each exposed child's untreated outcome; Imbens & Wooldridge 2009, s. 5.3), not
the exposure coefficient of one model with a common effect: when the effect differs between
children (long vs short care, placement moves) that coefficient is a variance-weighted average
of the effects, which is not the ATT. Confidence intervals: robust (HC1) sandwich for weighted
regression; for regression imputation the sampling variance of the exposed plus the
outcome-model coefficients' (HC3 or model-based) covariance by the delta method;
influence-function standard errors for AIPW (nuisance models treated as fixed); all Wald 95%.
A logistic outcome model whose maximum-likelihood fit does not exist (quasi-separation, e.g. a
category in which every unexposed child has the same outcome) is refitted with a small ridge
penalty (:class:`PenalisedLogit`) and the estimate carries a warning saying so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from scipy.special import expit

from models.folds import content_folds, content_order
from models.propensity import fit_binary_glm, inverse_link, standardise
from models.settings import ModelSettings

Method = Literal["unadjusted", "regression", "ipw", "aipw"]
# How a doubly robust estimator's nuisance models (propensity, outcome) are fitted: the
# pipeline's parametric models, or cross-fitted gradient boosting (:func:`cross_fitted_nuisances`)
Nuisance = Literal["parametric", "boosting"]
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
    # events (survival) or children with the outcome (binary) per group; None for continuous
    # outcomes. Disclosure control withholds an estimate resting on few of them.
    events_exposed: int | None = None
    events_unexposed: int | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def _wald(est: float, se: float) -> tuple[float, float, float]:
    if not np.isfinite(se) or se <= 0:
        return float("nan"), float("nan"), float("nan")
    return est - Z * se, est + Z * se, float(2 * stats.norm.sf(abs(est / se)))


class PenalisedLogit:
    """Logistic regression with a small ridge penalty (``fit_binary_glm``, ``l2 = 1e-4`` on
    standardised slopes), for when the maximum-likelihood fit does not exist. Offers the parts
    of a statsmodels result the fitter uses: ``params``, ``bse``, ``pvalues``,
    ``cov_params()`` and ``predict(design)``, on the original (unstandardised) columns; the
    covariance is the inverse of the penalised information."""

    def __init__(self, y: np.ndarray, xm: np.ndarray) -> None:
        mean, sd = xm.mean(axis=0), xm.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        z = standardise(xm, mean, sd)
        b, self.converged = fit_binary_glm(z, y, "logit")
        design = np.c_[np.ones(len(y)), z]
        mu = expit(design @ b)
        pen = np.full(len(b), 1e-4)
        pen[0] = 0.0
        info = (design * (mu * (1 - mu))[:, None]).T @ design + np.diag(pen)
        cov_z = np.linalg.pinv(info)
        # back to the original columns: b_x = A b_z
        a = np.diag(np.r_[1.0, 1.0 / sd])
        a[0, 1:] = -mean / sd
        self.params = a @ b
        self._cov = a @ cov_z @ a.T
        self.bse = np.sqrt(np.clip(np.diag(self._cov), 0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            self.pvalues = 2 * stats.norm.sf(np.abs(self.params / self.bse))

    def cov_params(self) -> np.ndarray:
        return self._cov

    def predict(self, design: np.ndarray) -> np.ndarray:
        return np.asarray(expit(np.asarray(design) @ self.params))


class ExposureEffectFitter:
    """ATT of a binary exposure on a continuous or binary outcome.

    Parameters
    ----------
    method
        ``unadjusted``, ``regression`` (regression imputation: OLS, or logistic for binary
        outcomes, fitted in the unexposed), ``ipw`` (ATT-weighted difference) or ``aipw``
        (doubly robust ATT).
    binary
        Outcome is 0/1: the effect is a risk difference.
    nuisance
        For ``aipw``: ``parametric`` (the ``weights`` given to :meth:`fit` and an outcome model
        on ``x``) or ``boosting`` (propensity and outcome models cross-fitted by gradient
        boosting on ``x``, :func:`cross_fitted_nuisances`; ``weights`` are not used; the
        nuisances are kept in ``nuisances_``).
    seed
        Fold assignment and boosting seed (``boosting`` only).
    """

    def __init__(
        self,
        method: Method = "aipw",
        binary: bool = False,
        nuisance: Nuisance = "parametric",
        seed: int = 0,
    ) -> None:
        if method not in ("unadjusted", "regression", "ipw", "aipw"):
            raise ValueError(f"unknown method {method!r}")
        if nuisance not in ("parametric", "boosting"):
            raise ValueError(f"unknown nuisance models {nuisance!r}")
        if nuisance == "boosting" and method != "aipw":
            raise ValueError("nuisance='boosting' is for the doubly robust method (aipw) only")
        self.method = method
        self.binary = binary
        self.nuisance = nuisance
        self.seed = seed
        self.warnings_: list[str] = []

    @classmethod
    def from_settings(
        cls, s: ModelSettings, method: Method = "aipw", binary: bool = False
    ) -> ExposureEffectFitter:
        """The fitter the model stage uses for ``method``. No model setting changes this
        fitter today (the stage passes it the outcome design chosen by cross-validation, see
        :func:`models.estimators.choose_outcome_design`); building it here keeps the stage and
        the notebooks on one path when one does."""
        return cls(method, binary=binary)

    def fit(
        self,
        y: np.ndarray,
        t: np.ndarray,
        x: pd.DataFrame | None = None,
        weights: np.ndarray | None = None,
        balanced_on: pd.DataFrame | None = None,
    ) -> ExposureEffectFitter:
        """Fit. ``weights``: ATT weights for ``ipw`` and ``aipw``. ``balanced_on``: the design
        the weights balance exactly (``PropensityScoreFitter(method="balancing")``); for
        ``ipw`` the standard error then accounts for estimating the weights (stacked
        M-estimation sandwich with a jackknife-type leverage correction,
        :func:`_balancing_ipw_se`) instead of treating them as fixed."""
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
        elif self.method == "regression":
            self._regression_att(y, t, xm)
        elif self.method == "ipw":
            if weights is None:
                raise ValueError("ipw needs weights")
            w = np.asarray(weights, float)
            keep = w > 0
            self._ols(y[keep], np.c_[np.ones(keep.sum()), t[keep]], w[keep])
            if balanced_on is not None:
                zb = balanced_on.to_numpy(float)
                self.se_ = _balancing_ipw_se(y[keep], t[keep], w[keep], zb[keep])
        elif self.nuisance == "boosting":
            # the weights come from the cross-fitted propensity, not from ``weights``
            nu = cross_fitted_nuisances(xm, y, t, self.binary, seed=self.seed)
            self.nuisances_ = nu
            self.warnings_ += nu.warnings
            self._aipw_given(y, t, nu.untreated, nu.att_weights(t))
        else:
            if weights is None:
                raise ValueError("aipw needs weights (propensity-based)")
            self._aipw(y, t, xm, np.asarray(weights, float))
        return self

    def untreated_predictions(self, y: np.ndarray, t: np.ndarray, x: pd.DataFrame) -> np.ndarray:
        """The untreated-outcome model (OLS, or logistic with the ridge fallback, fitted in the
        unexposed: the one regression imputation and AIPW use) predicted for every child."""
        y, t, xm = np.asarray(y, float), np.asarray(t, int), x.to_numpy(float)
        res = self._outcome_model(y[t == 0], xm[t == 0])
        return self._predict(res, xm)

    def _ols(self, y: np.ndarray, design: np.ndarray, w: np.ndarray | None = None) -> None:
        model = sm.WLS(y, design, weights=w) if w is not None else sm.OLS(y, design)
        res = model.fit(cov_type="HC1")
        self.estimate_ = float(res.params[1])
        self.se_ = float(res.bse[1])

    def _outcome_model(self, y: np.ndarray, xm: np.ndarray, robust: bool = False) -> Any:
        design = np.c_[np.ones(len(y)), xm]
        if not self.binary:
            # HC3 for the imputation model: its predictions for the exposed lean on
            # high-leverage unexposed children, where HC1 understates the variance
            return sm.OLS(y, design).fit(cov_type="HC3") if robust else sm.OLS(y, design).fit()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                # Newton converges in well under 35 steps when the maximum-likelihood fit
                # exists; when it does not (a category whose children all share the outcome:
                # quasi-separation) the coefficients run off and more steps only cost time
                res = sm.Logit(y, design).fit(disp=0, maxiter=35)
                converged = bool(res.mle_retvals["converged"])
            except Exception:  # perfect separation and friends
                converged = False
        if converged:
            for w in caught:
                if "separation" in str(w.message).lower():
                    self.warnings_.append("outcome model: " + str(w.message).split("\n")[0])
            return res
        self.warnings_.append(
            "logistic outcome model: no maximum-likelihood fit (quasi-separation); "
            "ridge-penalised fit used"
        )
        res = PenalisedLogit(y, xm)
        if not res.converged:
            self.warnings_.append("penalised logistic outcome model did not converge")
        return res

    def _predict(self, res: Any, xm: np.ndarray) -> np.ndarray:
        return np.asarray(res.predict(np.c_[np.ones(len(xm)), xm]))

    def _regression_att(self, y: np.ndarray, t: np.ndarray, xm: np.ndarray) -> None:
        """Regression imputation: ATT = mean over the exposed of y - m0(x), with m0 the outcome
        model (OLS or logistic) fitted in the unexposed. For a binary outcome the conditional
        odds ratio of a logistic model with the exposure as a covariate is kept as well."""
        res = self._outcome_model(y[t == 0], xm[t == 0], robust=True)
        d1 = np.c_[np.ones(int(t.sum())), xm[t == 1]]
        m1 = self._predict(res, xm[t == 1])
        self.estimate_ = float(np.mean(y[t == 1] - m1))
        # delta method over the outcome-model coefficients + sampling of the exposed
        grad = (d1 * (m1 * (1 - m1))[:, None]).mean(axis=0) if self.binary else d1.mean(axis=0)
        try:
            cov = np.asarray(res.cov_params())
            var_coef = float(grad @ cov @ grad)
        except Exception:
            var_coef = float("nan")
            self.warnings_.append("outcome-model covariance unavailable")
        var_mean = np.var(y[t == 1] - m1, ddof=1) / max(len(m1), 1)
        var = var_mean + var_coef
        if not np.isfinite(var) or var < 0:
            # e.g. a logistic fit that separated: its covariance is not positive definite
            self.warnings_.append(
                "standard error unavailable: outcome-model covariance not positive definite"
            )
            var = float("nan")
        self.se_ = float(np.sqrt(var))
        if self.binary:
            self._conditional_odds_ratio(y, t, xm)

    def _conditional_odds_ratio(self, y: np.ndarray, t: np.ndarray, xm: np.ndarray) -> None:
        res = self._outcome_model(y, np.c_[t, xm])
        self.odds_ratio_ = float(np.exp(res.params[1]))
        try:
            se_b = float(res.bse[1])
            with np.errstate(over="ignore"):
                self.odds_ratio_ci_ = (
                    float(np.exp(res.params[1] - Z * se_b)),
                    float(np.exp(res.params[1] + Z * se_b)),
                )
            self.odds_ratio_p_ = float(res.pvalues[1])
        except Exception:
            self.odds_ratio_ci_ = (float("nan"), float("nan"))
            self.odds_ratio_p_ = float("nan")

    def _aipw(self, y: np.ndarray, t: np.ndarray, xm: np.ndarray, w: np.ndarray) -> None:
        """Doubly robust ATT (Moodie et al.): outcome model fitted in the unexposed."""
        keep = w > 0
        y, t, xm, w = y[keep], t[keep], xm[keep], w[keep]
        res = self._outcome_model(y[t == 0], xm[t == 0])
        self._aipw_given(y, t, self._predict(res, xm), w)

    def _aipw_given(self, y: np.ndarray, t: np.ndarray, m0: np.ndarray, w: np.ndarray) -> None:
        """The doubly robust ATT and its influence-function SE from given nuisances: ``m0``
        the untreated-outcome predictions, ``w`` the unexposed children's ATT weights."""
        keep = w > 0
        y, t, m0, w = y[keep], t[keep], m0[keep], w[keep]
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


@dataclass
class Nuisances:
    """Cross-fitted nuisance predictions for every child (each from models that did not see
    the child): ``propensity`` P(exposed | x), ``untreated`` E[y | x, unexposed], and
    ``treated`` E[y | x, exposed] when asked for."""

    propensity: np.ndarray
    untreated: np.ndarray
    treated: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    def att_weights(self, t: np.ndarray, clip: float = 0.99) -> np.ndarray:
        """ATT weights: 1 for the exposed, the odds e / (1 - e) (e capped at ``clip``) for the
        unexposed, scaled so the unexposed weights sum to the number exposed."""
        e = np.minimum(self.propensity, clip)
        w = np.where(t == 1, 1.0, e / (1 - e))
        w[t == 0] *= t.sum() / max(w[t == 0].sum(), 1e-300)
        return w


def cross_fitted_nuisances(
    x: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    binary: bool,
    folds: int = 5,
    max_iter: int = 100,
    seed: int = 0,
    treated_outcome: bool = False,
) -> Nuisances:
    """Propensity and outcome models by gradient boosting (scikit-learn's
    HistGradientBoosting: at most ``max_iter`` rounds, stopped early when 20 rounds bring no
    improvement on a 10% validation split of the training rows; leaves of at least 20
    children), cross-fitted: children are split into ``folds`` folds (stratified on exposure);
    each fold's predictions come from models fitted on the other folds. The untreated-outcome
    model is fitted in the unexposed of the training folds (the treated one, if asked for, in
    the exposed); a binary outcome uses the classifier's probability. Folds by content
    (:func:`models.folds.content_folds`), stratified on exposure. What double machine
    learning's influence-function SEs assume (Chernozhukov et al. 2018)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    x, y, t = np.asarray(x, float), np.asarray(y, float), np.asarray(t, int)
    n = len(y)
    kw = {
        "max_iter": max_iter,
        "early_stopping": True,
        "n_iter_no_change": 20,
        "random_state": seed,
    }
    e, m0 = np.empty(n), np.empty(n)
    m1 = np.empty(n) if treated_outcome else None
    notes: list[str] = []

    def outcome_fit(rows: np.ndarray) -> Any:
        if binary:
            yr = y[rows]
            if yr.min() == yr.max():  # one class in the training rows: a constant prediction
                return float(yr[0])
            return HistGradientBoostingClassifier(**kw).fit(x[rows], yr.astype(int))
        return HistGradientBoostingRegressor(**kw).fit(x[rows], y[rows])

    def outcome_predict(model: Any, rows: np.ndarray) -> np.ndarray:
        if isinstance(model, float):
            return np.full(len(rows), model)
        if binary:
            return np.asarray(model.predict_proba(x[rows])[:, 1])
        return np.asarray(model.predict(x[rows]))

    # folds by content, and each fit's training rows in content order (boosting's early-
    # stopping split and its histograms follow the row order): models.folds
    data = np.column_stack([x, y, t])
    fold = content_folds(data, folds, seed, strata=t)
    rank = np.empty(n, dtype=int)
    rank[content_order(data)] = np.arange(n)
    for f in range(folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        train = train[np.argsort(rank[train])]
        ps = HistGradientBoostingClassifier(**kw).fit(x[train], t[train])
        e[test] = ps.predict_proba(x[test])[:, 1]
        m0[test] = outcome_predict(outcome_fit(train[t[train] == 0]), test)
        if m1 is not None:
            m1[test] = outcome_predict(outcome_fit(train[t[train] == 1]), test)
    if (e > 0.99).any():
        notes.append(f"boosting propensity above 0.99 for {int((e > 0.99).sum())} children: capped")
    return Nuisances(e, m0, m1, notes)


def e_value(
    estimate: float, ci_low: float, ci_high: float, scale: str, sd: float | None = None
) -> float:
    """E-value of the point estimate (VanderWeele & Ding 2017), what results/sensitivity.csv
    reports today; :func:`models.sensitivity.e_value_ci` gives the confidence limit's (the one
    the issue asks for: a change of ``models.outputs.sensitivity_table`` to call it is left to
    the owner of that file). ``sd``: the outcome's SD (a mean difference is standardised by it;
    for a 0/1 outcome sd^2 = p (1 - p) tells whether it is common, for the OR conversion).
    ``ci_low`` and ``ci_high`` are unused here (kept for the callers)."""
    from models.sensitivity import RARE_OUTCOME, e_value_point

    share = None
    if sd and scale in ("odds_ratio", "hazard_ratio") and sd**2 > RARE_OUTCOME * (1 - RARE_OUTCOME):
        share = 0.5
    return e_value_point(estimate, scale, sd=sd, outcome_share=share)


def _balancing_ipw_se(
    y: np.ndarray, t: np.ndarray, w: np.ndarray, x: np.ndarray, small_sample: bool = True
) -> float:
    """Standard error of the weighted ATT when the unexposed weights are exp(lam . x) chosen to
    balance the means of ``x`` exactly (entropy balancing / ATT-CBPS), accounting for
    estimating the weights, with a jackknife-type small-sample correction.

    The stacked M-estimation sandwich (estimating equations per child: t (x - m);
    (1 - t) e (x - m); (1 - t) e (y - mu0); t (y - mu1), with m the exposed means of x,
    e = exp(lam . x), mu0 the weighted unexposed and mu1 the exposed mean of y) reduces to a
    closed form (Zhao & Percival 2017): with ``beta`` the e-weighted least-squares fit of y on
    (1, x) in the unexposed and ``r`` its residuals, a child's influence on the ATT is
    (y - mu1 - (x - m) . beta) / n1 if exposed and -e r / sum(e) if unexposed
    (``small_sample=False`` gives exactly that plug-in, HC0-type variance).

    That plug-in variance is too small where a few unexposed children carry large weights in
    sparse cells (an authority or a year of age with few unexposed children): the balance they
    impose pulls their residuals towards 0, as least squares pulls a high-leverage point's.
    So each unexposed child's term is divided by 1 - h, with h its leverage
    e d' (D' E D)^-1 d in that weighted fit (HC3, MacKinnon & White 1985: the delete-one
    jackknife's approximation); h is capped at 0.99 (a child alone in its cell, whose removal
    would leave the cell unbalanceable). Measured 2026-12-02: on the pipeline's KS4 cohorts
    (20,000 children, seeds 1-3, 47 balancing columns, leverages up to 0.79) the plug-in SE
    was 0.74-0.94 of the bootstrap SE and this one 0.87-1.15; in a sparse-cell simulation
    (1,400 children, 400 replications) SD/SE went from 1.18 to 0.98 and coverage from 90.7% to
    96.3%.
    """
    x = standardise(x, x.mean(axis=0), x.std(axis=0))
    un, ex = t == 0, t == 1
    e, y0 = w[un], y[un]
    d = np.c_[np.ones(int(un.sum())), x[un]]
    gram_inv = np.linalg.pinv((d * e[:, None]).T @ d)
    beta = gram_inv @ ((d * e[:, None]).T @ y0)
    resid = y0 - d @ beta
    influence_unexposed = e * resid / e.sum()
    if small_sample:
        leverage = e * np.einsum("ij,ij->i", d @ gram_inv, d)
        influence_unexposed = influence_unexposed / (1 - np.clip(leverage, 0.0, 0.99))
    x1, y1 = x[ex], y[ex]
    influence_exposed = ((y1 - y1.mean()) - (x1 - x1.mean(axis=0)) @ beta[1:]) / len(y1)
    return float(np.sqrt(np.sum(influence_unexposed**2) + np.sum(influence_exposed**2)))


def ipw_point(
    y: np.ndarray, t: np.ndarray, w: np.ndarray, counts: np.ndarray | None = None
) -> float:
    """The weighted ATT; ``counts``: each row's number of copies (the exposed rows' weights
    are then their counts, as :meth:`PropensityScoreFitter.bootstrap_refitter` gives them)."""
    mean1 = (
        y[t == 1].mean() if counts is None else counts[t == 1] @ y[t == 1] / counts[t == 1].sum()
    )
    return float(mean1 - np.sum(w[t == 0] * y[t == 0]) / np.sum(w[t == 0]))


def _untreated_prediction(
    y: np.ndarray,
    t: np.ndarray,
    z: np.ndarray,
    binary: bool,
    init: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> np.ndarray:
    """m0(x) for every row of the standardised design ``z``: OLS (normal equations) or
    logistic regression (a 1e-4 ridge, as the propensity model) fitted in the unexposed; a
    lighter twin of the fitter's outcome model for bootstrap replicates. ``init``: starting
    coefficients of the logistic fit (the full-sample ones, from
    :func:`_untreated_coefficients`). ``counts``: each row's number of copies (the fit is the
    one on the rows repeated)."""
    un = t == 0
    c0 = None if counts is None else np.asarray(counts, dtype=float)[un]
    if binary:
        # predictions settle long before the coefficients of sparse, separated columns do
        b, _ = fit_binary_glm(z[un], y[un], "logit", max_iter=25, tol=1e-6, init=init, counts=c0)
        return inverse_link(b[0] + z @ b[1:], "logit")
    d = np.c_[np.ones(int(un.sum())), z[un]]
    if c0 is None:
        gram, rhs, n0 = d.T @ d, d.T @ y[un], len(d)
    else:
        root = d * np.sqrt(c0)[:, None]
        gram, rhs, n0 = root.T @ root, d.T @ (c0 * y[un]), c0.sum()
    gram[np.diag_indices_from(gram)] += 1e-8 * n0
    b = np.linalg.solve(gram, rhs)
    return np.asarray(b[0] + z @ b[1:])


def _untreated_coefficients(y: np.ndarray, t: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The logistic coefficients :func:`_untreated_prediction` fits, on the full sample."""
    b, _ = fit_binary_glm(z[t == 0], y[t == 0], "logit", max_iter=25, tol=1e-6)
    return b


def _aipw_point(
    y: np.ndarray, t: np.ndarray, m0: np.ndarray, w: np.ndarray, counts: np.ndarray | None = None
) -> float:
    r = y - m0
    if counts is None:
        return float((np.sum(t * r) - np.sum((1 - t) * w * r)) / t.sum())
    return float((np.sum(t * counts * r) - np.sum((1 - t) * w * r)) / np.sum(t * counts))


def bootstrap_weighting_se(
    t: np.ndarray,
    refit_weights: Callable[..., np.ndarray],
    outcomes: dict[str, tuple[np.ndarray, pd.DataFrame, bool]],
    replicates: int = 200,
    seed: int = 0,
) -> dict[tuple[str, str], float]:
    """Bootstrap standard errors of the ``ipw`` and ``aipw`` ATT estimates: the spread of
    :func:`bootstrap_weighting_draws` (NaN with fewer than 20 or half the replicates usable)."""
    draws = bootstrap_weighting_draws(t, refit_weights, outcomes, replicates, seed)
    return {k: bootstrap_sd(v, replicates) for k, v in draws.items()}


def bootstrap_sd(draws: np.ndarray, replicates: int) -> float:
    """The SD of the usable ``draws`` of ``replicates`` bootstrap replicates, the bootstrap
    standard error; NaN when fewer than 20 or half the replicates are usable."""
    return float(np.std(draws, ddof=1)) if len(draws) >= max(20, replicates // 2) else float("nan")


def bootstrap_weighting_draws(
    t: np.ndarray,
    refit_weights: Callable[..., np.ndarray],
    outcomes: dict[str, tuple[np.ndarray, pd.DataFrame, bool]],
    replicates: int = 200,
    seed: int = 0,
) -> dict[tuple[str, str], np.ndarray]:
    """Bootstrap replicates of the ``ipw`` and ``aipw`` ATT estimates, (name, method) ->
    the usable replicates' estimates.

    Children are resampled within exposure groups (the numbers exposed and unexposed stay
    fixed); in each replicate the weights are re-estimated (``refit_weights(rows, counts)``,
    :meth:`PropensityScoreFitter.bootstrap_refitter`) and so is each outcome's
    untreated-outcome model. ``outcomes``: name -> (y, outcome design, binary).

    A replicate is fitted on the children drawn, each once with the number of times it was
    drawn as a frequency weight: the same estimates as on the rows repeated (the same random
    draws, so the same replicates), on the 63% of the children a replicate holds.

    Replicates are drawn from the children in the order of their content (exposure, each
    outcome and its design: :func:`models.folds.content_order`), so the same data in another
    row order (another pseudonymisation secret) gives the same standard errors.

    Why not only the analytic standard errors: where a few unexposed children carry large
    weights (near-violations of positivity) the sandwich and influence-function variances are
    estimated from those few children and are too small in the samples where they are
    under-represented, the same samples where the estimate is furthest off.
    """
    draws: dict[tuple[str, str], list[float]] = {
        (name, m): [] for name in outcomes for m in ("ipw", "aipw")
    }
    for rep in _weighting_replicates(t, refit_weights, outcomes, replicates, seed):
        for name, (yb, m0) in rep.fits.items():
            draws[(name, "ipw")].append(ipw_point(yb, rep.t, rep.w, rep.counts))
            draws[(name, "aipw")].append(_aipw_point(yb, rep.t, m0, rep.w, rep.counts))
    return {k: np.asarray(v, dtype=float) for k, v in draws.items()}


def bootstrap_stratum_draws(
    t: np.ndarray,
    refit_weights: Callable[..., np.ndarray],
    outcomes: dict[str, tuple[np.ndarray, pd.DataFrame, bool]],
    strata: dict[str, np.ndarray],
    replicates: int = 200,
    seed: int = 0,
) -> dict[tuple[str, str], np.ndarray]:
    """Bootstrap replicates of the stratum ATTs of :func:`models.heterogeneity.stratum_atts`
    (the same replicates as :func:`bootstrap_weighting_draws`: weights and untreated-outcome
    models refitted on the whole cohort, the ATT then taken within the stratum, the weights
    normalised there). ``strata``: name -> each child's membership (bool). Returns
    (outcome, stratum) -> the replicates' (in, out, in - out) estimates as rows of an
    array of shape (replicates, 3); NaN where a replicate leaves a stratum without exposed
    children or without weight among its unexposed.

    Why not the influence function alone: within a stratum a few unexposed children can carry
    most of the weight (a Kish effective size of 9 of 33 children with a recorded physical
    abuse in a 20,000-child world), and the fixed-nuisance influence function, estimated from
    those few children and blind to the refitted models: that stratum's estimates spread 1.2-1.5
    times it over worlds, 1.1 times the bootstrap's (docs/gmethods.md)."""
    draws: dict[tuple[str, str], list[tuple[float, float, float]]] = {
        (name, k): [] for name in outcomes for k in strata
    }
    for rep in _weighting_replicates(t, refit_weights, outcomes, replicates, seed):
        exposed = rep.t == 1
        for name, (yb, m0) in rep.fits.items():
            r = yb - m0
            for k, member in strata.items():
                sb = member[rep.rows]
                est = []
                for sel in (sb, ~sb):
                    c1 = rep.counts[exposed & sel]
                    w0 = rep.w[~exposed & sel]
                    if c1.sum() <= 0 or w0.sum() <= 0:
                        est.append(np.nan)
                        continue
                    mu1 = c1 @ r[exposed & sel] / c1.sum()
                    est.append(float(mu1 - w0 @ r[~exposed & sel] / w0.sum()))
                draws[(name, k)].append((est[0], est[1], est[0] - est[1]))
    return {k: np.asarray(v, dtype=float).reshape(-1, 3) for k, v in draws.items()}


@dataclass
class _Replicate:
    """One bootstrap replicate: the children drawn (``rows``, each once) with how often
    (``counts``), their exposure, refitted weights and, per outcome, (y, refitted m0)."""

    rows: np.ndarray
    counts: np.ndarray
    t: np.ndarray
    w: np.ndarray
    fits: dict[str, tuple[np.ndarray, np.ndarray]]


def _weighting_replicates(
    t: np.ndarray,
    refit_weights: Callable[..., np.ndarray],
    outcomes: dict[str, tuple[np.ndarray, pd.DataFrame, bool]],
    replicates: int,
    seed: int,
) -> Iterator[_Replicate]:
    """The usable replicates of :func:`bootstrap_weighting_draws` (resampling, refitted
    weights and untreated-outcome models), one at a time."""
    rng = np.random.default_rng(seed)
    # children drawn by their rank in content order, not their position (models.folds): the
    # same replicates whatever order the person keys put the rows in
    order = content_order(
        np.column_stack([t, *(np.c_[y, x.to_numpy(float)] for y, x, _b in outcomes.values())])
    )
    idx1, idx0 = order[t[order] == 1], order[t[order] == 0]
    # each outcome design is standardised once, on the full sample (outcomes sharing a design
    # share it), and its replicate rows are taken once per replicate
    standardised: dict[int, np.ndarray] = {}
    for _y, x, _b in outcomes.values():
        if id(x) not in standardised:
            xm = x.to_numpy(float)
            standardised[id(x)] = standardise(xm, xm.mean(axis=0), xm.std(axis=0))
    arrays = {name: (y, id(x), b) for name, (y, x, b) in outcomes.items()}
    # replicates start their logistic fits from the full-sample coefficients (fewer steps)
    inits = {
        name: _untreated_coefficients(y, t, standardised[key]) if binary else None
        for name, (y, key, binary) in arrays.items()
    }
    for _ in range(replicates):
        drawn = np.r_[rng.choice(idx1, idx1.size), rng.choice(idx0, idx0.size)]
        count = np.bincount(drawn, minlength=len(t))
        rows = np.flatnonzero(count)
        cb = count[rows].astype(float)
        tb = t[rows]
        wb = refit_weights(rows, cb)
        if not np.all(np.isfinite(wb)) or wb[tb == 0].sum() <= 0:
            continue
        zb = {key: z[rows] for key, z in standardised.items()}
        fits = {}
        for name, (y, key, binary) in arrays.items():
            yb = y[rows]
            fits[name] = (yb, _untreated_prediction(yb, tb, zb[key], binary, inits[name], cb))
        yield _Replicate(rows, cb, tb, wb, fits)


def select_outcome_design(
    designs: dict[str, pd.DataFrame],
    y: np.ndarray,
    t: np.ndarray,
    binary: bool = False,
    folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Cross-validated prediction error of the untreated-outcome model, per candidate design.

    Fitted and scored in the unexposed only (the model that regression imputation and AIPW
    use): mean squared error for a continuous outcome, binomial deviance per child for a binary
    one. Returns ``design``, ``n_columns``, ``cv_error``, ``selected`` (smallest error; ties to
    the earlier, simpler design).
    """
    unexposed = np.asarray(t) == 0
    y0 = np.asarray(y, float)[unexposed]
    x0 = {name: x.to_numpy(float)[unexposed] for name, x in designs.items()}
    # the same folds for every design, set by the rows' content (every design's columns and
    # the outcome), not by their order: models.folds
    fold = content_folds(np.column_stack([y0, *x0.values()]), folds, seed)
    rows = []
    for name, x in designs.items():
        xv = x0[name]
        err = 0.0
        for f in range(folds):
            tr, te = fold != f, fold == f
            m, s = xv[tr].mean(axis=0), xv[tr].std(axis=0)
            ztr, zte = standardise(xv[tr], m, s), standardise(xv[te], m, s)
            if binary:
                b, _ = fit_binary_glm(ztr, y0[tr], "logit")
                mu = np.clip(inverse_link(b[0] + zte @ b[1:], "logit"), 1e-12, 1 - 1e-12)
                err += -2.0 * float(np.sum(y0[te] * np.log(mu) + (1 - y0[te]) * np.log1p(-mu)))
            else:
                d = np.c_[np.ones(tr.sum()), ztr]
                gram = d.T @ d
                gram[np.diag_indices_from(gram)] += 1e-8 * len(d)  # guards collinear columns
                b = np.linalg.solve(gram, d.T @ y0[tr])
                err += float(np.sum((y0[te] - b[0] - zte @ b[1:]) ** 2))
        rows.append({"design": name, "n_columns": x.shape[1], "cv_error": err / len(y0)})
    out = pd.DataFrame(rows)
    out["selected"] = np.arange(len(out)) == int(np.nanargmin(out["cv_error"].to_numpy()))
    return out


@dataclass
class GEEFit:
    """A Gaussian GEE fit: coefficients, robust (sandwich) covariance, exchangeable
    correlation, and whether the iterations converged."""

    params: np.ndarray
    cov_robust: np.ndarray
    rho: float
    converged: bool

    @property
    def bse(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov_robust), 0, None))

    @property
    def pvalues(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(2 * stats.norm.sf(np.abs(self.params / self.bse)))


def fit_exchangeable_gee(
    y: np.ndarray, x: np.ndarray, groups: np.ndarray, max_iter: int = 60, ctol: float = 1e-6
) -> GEEFit:
    """Linear GEE (Gaussian, identity link) with an exchangeable working correlation within
    each group and the robust sandwich covariance: statsmodels'
    ``GEE(y, x, groups, family=Gaussian(), cov_struct=Exchangeable()).fit()`` step for step
    (the same start, updates, moment estimates of the scale and correlation and stopping rule;
    pinned in ``tests/test_model_speed.py``), with the per-group sums vectorised.

    statsmodels loops over the groups in Python in every iteration (about 30 s per fit on the
    pipeline's 1,000,000-child school years); with a group of m rows the inverse working
    correlation is ``(I - c J) / (1 - rho)``, ``c = rho / (1 + rho (m - 1))``, so every group sum
    the iterations need is a column sum per group, one ``bincount`` pass.
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    n, p = x.shape
    code = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    n_groups = int(code.max()) + 1 if n else 0
    size = np.bincount(code, minlength=n_groups).astype(float)

    def by_group(v: np.ndarray) -> np.ndarray:
        """Per group: the sums of the columns of ``v`` (n_groups by p)."""
        return np.column_stack([np.bincount(code, v[:, j], n_groups) for j in range(v.shape[1])])

    xtx = x.T @ x
    x_sum = by_group(x)  # X_g' 1
    pairs = float(np.sum(size * (size - 1) / 2))
    params = np.linalg.lstsq(x, y, rcond=None)[0]  # the GLM (OLS) start

    def solve_pieces(rho: float, resid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sum_g X_g' R_g^-1 X_g and sum_g X_g' R_g^-1 r_g."""
        c = rho / ((1 - rho) * (1 + rho * (size - 1)))
        bmat = xtx / (1 - rho) - (x_sum * c[:, None]).T @ x_sum
        r_sum = np.bincount(code, resid, n_groups)
        score = x.T @ resid / (1 - rho) - x_sum.T @ (c * r_sum)
        return bmat, score

    def correlation(resid: np.ndarray) -> float:
        scale = float(resid @ resid) / (n - p)
        r_sum = np.bincount(code, resid, n_groups)
        ssr = np.bincount(code, resid * resid, n_groups)
        return float(np.sum((r_sum**2 - ssr) / 2) / scale / (pairs - p))

    rho, updated, score_norm = 0.0, False, np.inf
    for _ in range(max_iter):
        bmat, score = solve_pieces(rho, y - x @ params)
        params = params + np.linalg.solve(bmat, score)
        score_norm = float(np.sqrt(np.sum(score**2)))
        if score_norm < ctol and updated:
            break
        rho, updated = correlation(y - x @ params), True
    resid = y - x @ params
    bmat, _ = solve_pieces(rho, resid)
    c = rho / ((1 - rho) * (1 + rho * (size - 1)))
    r_sum = np.bincount(code, resid, n_groups)
    u = (by_group(x * resid[:, None]) / (1 - rho)) - x_sum * (c * r_sum)[:, None]
    try:
        bread = np.linalg.inv(bmat)
    except np.linalg.LinAlgError:
        bread = np.linalg.pinv(bmat)
    return GEEFit(params, bread @ (u.T @ u) @ bread, rho, score_norm < ctol)
