"""Propensity score, weights and covariate balance, in lifelines' fit / summary / plot style.

The propensity model is a binary GLM (logit or complementary log-log link) fitted by penalised
IRLS on standardised covariates. Which design and link to use is chosen from a declared ladder
of candidates by K-fold cross-validated binomial deviance (:func:`select_propensity_model`), a
rule that uses the exposure only (never the outcome) and so cannot be steered towards a wanted
effect. The complementary log-log link is on the ladder because "looked after before year 11" is
a grouped time-to-event: with a care-entry hazard proportional in the covariates,
``P(entered before year 11 | x) = 1 - exp(-H0(t) exp(x b))``, which is linear on the cloglog
scale and not on the logit scale. Splines of continuous covariates (age at the index date, which
fixes the time left before year 11, and deprivation), a count of recorded adversities and
interactions with age let the linear predictor bend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from models.folds import content_folds
from models.settings import Link, ModelSettings

LINKS: tuple[Link, ...] = ("logit", "cloglog")
# Harrell (Regression Modeling Strategies, 2nd ed., table 2.3): knot quantiles by number of knots
MAX_LOG_WEIGHT_RANGE = 60.0  # entropy balancing gives up when weights would differ by e^60
RCS_QUANTILES = {
    3: (0.10, 0.50, 0.90),
    4: (0.05, 0.35, 0.65, 0.95),
    5: (0.05, 0.275, 0.50, 0.725, 0.95),
    6: (0.05, 0.23, 0.41, 0.59, 0.77, 0.95),
}


def design_matrix(df: pd.DataFrame, covariates: list[str], categorical: list[str]) -> pd.DataFrame:
    """Numeric design: dummies for categorical covariates (first level dropped); constant
    columns are dropped (and reported by callers as a warning)."""
    parts = []
    for c in covariates:
        if c in categorical:
            parts.append(
                pd.get_dummies(
                    df[c].astype("string").fillna("missing"), prefix=c, drop_first=True, dtype=float
                )
            )
        else:
            col = df[[c]].astype(float)
            if col[c].isna().any():  # explicit: mean-filled plus a missing indicator
                parts.append(col[c].isna().astype(float).rename(f"{c}_missing").to_frame())
                col = col.fillna(col[c].mean() if col[c].notna().any() else 0.0)
            parts.append(col)
    x = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=df.index)
    return x.loc[:, x.std(ddof=0) > 0]


def restricted_cubic_spline(x: pd.Series | np.ndarray, n_knots: int, name: str) -> pd.DataFrame:
    """Nonlinear columns of a restricted (natural) cubic spline, Harrell's parameterisation.

    Knots at the quantiles of :data:`RCS_QUANTILES` (fewer if ``x`` has few distinct values);
    the ``n_knots - 2`` returned columns are added to the linear term, which the caller keeps.
    Scaled by the squared knot range so the columns are on the scale of ``x``.
    """
    if n_knots not in RCS_QUANTILES:
        raise ValueError(f"n_knots must be one of {sorted(RCS_QUANTILES)}, got {n_knots}")
    v = np.asarray(x, dtype=float)
    index = x.index if isinstance(x, pd.Series) else None
    fill = np.nanmean(v) if np.isfinite(v).any() else 0.0
    v = np.where(np.isfinite(v), v, fill)
    knots = np.unique(np.quantile(v, RCS_QUANTILES[n_knots]))
    if knots.size < 3:
        return pd.DataFrame(index=index if index is not None else pd.RangeIndex(len(v)))
    k = knots
    scale = (k[-1] - k[0]) ** 2
    cols = {}
    for j in range(k.size - 2):
        term = (
            np.clip(v - k[j], 0, None) ** 3
            - np.clip(v - k[-2], 0, None) ** 3 * (k[-1] - k[j]) / (k[-1] - k[-2])
            + np.clip(v - k[-1], 0, None) ** 3 * (k[-2] - k[j]) / (k[-1] - k[-2])
        )
        cols[f"{name}_rcs{j + 1}"] = term / scale
    return pd.DataFrame(cols, index=index)


def flexible_design(
    df: pd.DataFrame,
    base: pd.DataFrame,
    *,
    splines: dict[str, int],
    count_of: list[str],
    count_name: str = "n_recorded_adversities",
    count_cap: int = 3,
    interact_with: str | None = None,
    interaction_terms: list[str] | None = None,
) -> pd.DataFrame:
    """``base`` plus restricted cubic splines, dummies of a capped count and interactions.

    * each column of ``splines`` (name -> number of knots) enters linearly (if ``base`` lacks
      it) plus its spline terms;
    * ``count_name``: dummies for 2, ..., ``count_cap``+ of the sum of the ``count_of`` flags (one
      flag is the sum's linear part, already in ``base``);
    * ``interact_with`` (standardised) times each of ``interaction_terms`` (the count is
      available as ``count_name``).
    Constant columns are dropped.
    """
    parts = [base]
    for col, knots in splines.items():
        if col not in df:
            continue
        v = df[col].astype(float)
        if col not in base:
            parts.append(v.fillna(v.mean()).rename(col).to_frame())
        parts.append(restricted_cubic_spline(v, knots, col))
    present = [c for c in count_of if c in df]
    count = (
        df[present].astype(float).fillna(0).sum(axis=1)
        if present
        else pd.Series(0.0, index=df.index)
    )
    if present:
        for level in range(2, count_cap + 1):
            hit = count >= level if level == count_cap else count == level
            parts.append(hit.astype(float).rename(f"{count_name}_{level}").to_frame())
    if interact_with is not None and interact_with in df:
        a = df[interact_with].astype(float)
        a = (a - a.mean()) / (a.std() if a.std() > 0 else 1.0)
        for term in interaction_terms or []:
            other = count if term == count_name else df[term].astype(float) if term in df else None
            if other is None:
                continue
            other = other.fillna(other.mean())
            parts.append((a * other).rename(f"{interact_with}_x_{term}").to_frame())
    x = pd.concat(parts, axis=1)
    x = x.loc[:, ~x.columns.duplicated()]
    return x.loc[:, x.std(ddof=0) > 0]


def inverse_link(eta: np.ndarray, link: Link) -> np.ndarray:
    eta = np.clip(eta, -30, 30)
    if link == "logit":
        return 1.0 / (1.0 + np.exp(-eta))
    return -np.expm1(-np.exp(eta))


def _mu_eta(eta: np.ndarray, link: Link) -> np.ndarray:
    """d mu / d eta."""
    eta = np.clip(eta, -30, 30)
    if link == "logit":
        p = 1.0 / (1.0 + np.exp(-eta))
        return p * (1 - p)
    return np.exp(eta - np.exp(eta))


def fit_binary_glm(
    z: np.ndarray,
    t: np.ndarray,
    link: Link = "logit",
    l2: float = 1e-4,
    max_iter: int = 100,
    tol: float = 1e-8,
    init: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """Penalised maximum likelihood for a binary GLM by Fisher scoring with step halving.

    ``z`` excludes the intercept (added here, unpenalised); ``l2`` is the ridge penalty
    ``l2 / 2 * |b|^2`` on the slopes, relative to the summed log-likelihood (``l2 = 1e-4`` is
    scikit-learn's ``C = 1e4``). Returns the coefficients (intercept first) and whether the fit
    converged. ``init``: a starting point (e.g. the full-sample fit, for a bootstrap
    replicate), used when its objective beats the intercept-only start. ``counts``: how many
    times each row counts (a bootstrap replicate's children, each once with the number of
    times it was drawn): the fit is the one on the rows repeated, on fewer rows.
    """
    n, p = z.shape
    c = np.ones(n) if counts is None else np.asarray(counts, dtype=float)
    design = np.c_[np.ones(n), z]
    pen = np.full(p + 1, l2)
    pen[0] = 0.0
    prev = float(np.clip(t.mean() if counts is None else c @ t / c.sum(), 1e-4, 1 - 1e-4))
    b = np.zeros(p + 1)
    b[0] = np.log(prev / (1 - prev)) if link == "logit" else np.log(-np.log1p(-prev))

    def objective(beta: np.ndarray) -> float:
        mu = np.clip(inverse_link(design @ beta, link), 1e-12, 1 - 1e-12)
        ll = (
            np.sum(t * np.log(mu) + (1 - t) * np.log1p(-mu))
            if counts is None
            else (c @ (t * np.log(mu) + (1 - t) * np.log1p(-mu)))
        )
        return float(-ll + 0.5 * np.sum(pen * beta**2))

    obj = objective(b)
    if init is not None and init.shape == b.shape:
        start = objective(init)
        if np.isfinite(start) and start < obj:
            b, obj = init.astype(float).copy(), start
    converged = False
    for _ in range(max_iter):
        eta = design @ b
        mu = np.clip(inverse_link(eta, link), 1e-12, 1 - 1e-12)
        d = _mu_eta(eta, link)
        var = mu * (1 - mu)
        score = design.T @ (c * (t - mu) * d / var) - pen * b
        # a' a with a = design * sqrt(weight): numpy computes a product of a matrix with its
        # own transpose by one symmetric rank-k update (half the work of design' W design)
        root_w = design * (np.abs(d) * np.sqrt(c / var))[:, None]
        info = root_w.T @ root_w + np.diag(pen)
        try:
            step = np.linalg.solve(info, score)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(info, score, rcond=None)[0]
        for _half in range(30):
            cand = b + step
            new = objective(cand)
            if np.isfinite(new) and new <= obj + 1e-10 * abs(obj):
                break
            step = step / 2
        else:
            break
        b, old = cand, obj
        obj = new
        if abs(old - obj) < tol * (abs(obj) + 1.0):
            converged = True
            break
    return b, converged


def entropy_balance(
    z: np.ndarray,
    t: np.ndarray,
    max_iter: int = 200,
    tol: float = 1e-8,
    base: np.ndarray | None = None,
    init: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Entropy balancing for the ATT (Hainmueller 2012): unexposed weights ``exp(z0 . lam)``,
    normalised, whose weighted means of ``z`` equal the exposed means, with the least
    Kullback-Leibler divergence from uniform weights.

    Newton's method on the convex dual ``log sum exp((z0 - zbar1) . lam)``. Returns ``lam`` and the
    largest remaining absolute imbalance (in the units of ``z``): 0 up to ``tol`` when the
    constraints are feasible, clearly above it when they are not (no unexposed weighting can
    reach the exposed means). Equivalent to a logistic propensity score with slopes ``lam``
    fitted by the just-identified covariate-balancing (CBPS) conditions for the ATT (Imai &
    Ratkovic 2014; Zhao & Percival 2017).

    ``base``: positive base weights of the unexposed (e.g. the odds of a fitted propensity
    score); the weights become ``base * exp(z0 . lam)``, as close to ``base`` as balance allows
    (calibration weighting, Deville & Sarndal 1992). ``init``: a starting ``lam`` (e.g. the
    full-sample solution, for a bootstrap replicate); the dual is convex, so only the number
    of Newton steps depends on it. ``counts``: how many times each row counts (see
    :func:`fit_binary_glm`): the exposed means are weighted by them and the unexposed rows'
    weights multiplied by them, which is balancing the rows repeated.
    """
    if counts is None:
        d = z[t == 0] - z[t == 1].mean(axis=0)
    else:
        c1 = np.asarray(counts, dtype=float)[t == 1]
        d = z[t == 0] - c1 @ z[t == 1] / c1.sum()
        c0 = np.asarray(counts, dtype=float)[t == 0]
        base = c0 if base is None else base * c0
    # a target outside the range of the unexposed values (e.g. a category with exposed but no
    # unexposed children) cannot be met by any positive weights
    outside = (d.max(axis=0) < -tol) | (d.min(axis=0) > tol)
    if outside.any():
        return np.zeros(z.shape[1]), float(np.abs(d).min(axis=0)[outside].max())
    lam = np.zeros(z.shape[1])
    offset = np.zeros(len(d)) if base is None else np.log(np.clip(base, 1e-300, None))
    if init is not None and init.shape == lam.shape and np.all(np.isfinite(init)):
        lam = init.astype(float).copy()

    def dual(v: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        a = d @ v + offset
        top = a.max()
        q = np.exp(a - top)
        total = q.sum()
        return float(np.log(total) + top), q / total, a

    f, q, _ = dual(lam)
    gap = float(np.abs(q @ d).max())
    for _ in range(max_iter):
        g = q @ d
        gap = float(np.abs(g).max())
        if gap < tol:
            break
        root_q = d * np.sqrt(q)[:, None]  # a' a: one symmetric rank-k update (see above)
        hess = root_q.T @ root_q - np.outer(g, g)
        hess[np.diag_indices_from(hess)] += 1e-10
        try:
            step = np.linalg.solve(hess, g)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, g, rcond=None)[0]
        size, f_old = 1.0, f
        for _half in range(50):
            cand = lam - size * step
            f_new, q_new, _ = dual(cand)
            if np.isfinite(f_new) and f_new <= f:
                break
            size /= 2
        else:
            break
        lam, f, q = cand, f_new, q_new
        a = d @ lam
        if f_old - f < 1e-15 * max(1.0, abs(f)) or a.max() - a.min() > MAX_LOG_WEIGHT_RANGE:
            # stalled, or weights already e^60 apart: the constraints are (practically)
            # infeasible and the dual is running off to infinity
            gap = float(np.abs(q @ d).max())
            break
    return lam, gap


def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size of the positive weights ``w`` (0 when there are none)."""
    w = np.asarray(w, float)
    w = w[w > 0]
    return float(w.sum() ** 2 / np.sum(w**2)) if len(w) else 0.0


def standardise(xv: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return (xv - mean) / np.where(sd > 0, sd, 1)


def cross_validated_deviance(
    x: pd.DataFrame,
    treatment: np.ndarray,
    link: Link,
    folds: int = 5,
    seed: int = 0,
    fold: np.ndarray | None = None,
) -> float:
    """Binomial deviance of held-out exposure over ``folds`` folds (stratified on exposure,
    seeded, by the rows' content: :func:`models.folds.content_folds`). ``fold``: each row's
    fold, given (the same for every candidate design) instead of made from ``x``."""
    t = np.asarray(treatment, dtype=float)
    xv = x.to_numpy(dtype=float)
    if fold is None:
        fold = content_folds(np.column_stack([xv, t]), folds, seed, strata=t)
    dev = 0.0
    for f in range(folds):
        tr, te = fold != f, fold == f
        m, s = xv[tr].mean(axis=0), xv[tr].std(axis=0)
        b, _ = fit_binary_glm(standardise(xv[tr], m, s), t[tr], link)
        eta = b[0] + standardise(xv[te], m, s) @ b[1:]
        mu = np.clip(inverse_link(eta, link), 1e-12, 1 - 1e-12)
        dev += -2.0 * float(np.sum(t[te] * np.log(mu) + (1 - t[te]) * np.log1p(-mu)))
    return dev


def select_propensity_model(
    designs: dict[str, pd.DataFrame],
    treatment: np.ndarray | pd.Series,
    links: tuple[Link, ...] | list[Link] = LINKS,
    folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Cross-validated deviance of every (design, link) candidate; the smallest is selected.

    Returns one row per candidate (``design``, ``link``, ``n_columns``, ``cv_deviance``,
    ``selected``), ordered as given. Ties go to the earlier (simpler) candidate.
    """
    t = np.asarray(treatment, dtype=int)
    # one set of folds for every candidate, from every design's columns and the exposure
    fold = content_folds(
        np.column_stack([t, *(x.to_numpy(float) for x in designs.values())]),
        folds,
        seed,
        strata=t,
    )
    rows = []
    for name, x in designs.items():
        for link in links:
            if link not in LINKS:
                raise ValueError(f"unknown link {link!r}; expected one of {LINKS}")
            rows.append(
                {
                    "design": name,
                    "link": link,
                    "n_columns": x.shape[1],
                    "cv_deviance": cross_validated_deviance(x, t, link, folds, seed, fold),
                }
            )
    out = pd.DataFrame(rows)
    best = int(np.nanargmin(out["cv_deviance"].to_numpy()))
    out["selected"] = np.arange(len(out)) == best
    return out


def smd(x: np.ndarray, t: np.ndarray, w: np.ndarray | None = None) -> float:
    """Standardised mean difference (pooled unweighted SD in the denominator)."""
    w = np.ones_like(x, dtype=float) if w is None else w
    m1 = np.average(x[t == 1], weights=w[t == 1])
    m0 = np.average(x[t == 0], weights=w[t == 0])
    sd = np.sqrt((x[t == 1].var() + x[t == 0].var()) / 2)
    return float((m1 - m0) / sd) if sd > 0 else 0.0


class PropensityScoreFitter:
    """Propensity of exposure given pre-exposure covariates, with weights and diagnostics.

    Parameters
    ----------
    estimand
        ``"ATT"`` (weights: exposed 1, unexposed ps/(1-ps), normalised) or ``"ATE"``
        (stabilised inverse-probability weights).
    trim
        Drop units with propensity outside ``[trim, 1 - trim]`` (0 = no trimming).
    truncate
        Truncate weights at this upper percentile (e.g. 99; None = no truncation).
    balance_threshold
        Absolute SMD above which a covariate fails balance (0.1).
    link
        ``"logit"`` (logistic regression) or ``"cloglog"`` (complementary log-log); for
        ``method="likelihood"``.
    method
        ``"likelihood"``: the GLM fitted by (penalised) maximum likelihood. ``"balancing"`` (ATT
        only): a logistic propensity whose coefficients make the weighted unexposed means of
        every design column equal the exposed means exactly (entropy balancing, see
        :func:`entropy_balance`); falls back to maximum likelihood, with a warning, when exact
        balance is infeasible.
    """

    def __init__(
        self,
        estimand: Literal["ATT", "ATE"] = "ATT",
        trim: float = 0.0,
        truncate: float | None = 99.5,
        balance_threshold: float = 0.1,
        link: Link = "logit",
        method: Literal["likelihood", "balancing"] = "likelihood",
    ) -> None:
        if estimand not in ("ATT", "ATE"):
            raise ValueError(f"estimand must be 'ATT' or 'ATE', got {estimand!r}")
        if not 0 <= trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {trim}")
        if truncate is not None and not 50 < truncate <= 100:
            raise ValueError(f"truncate must be a percentile in (50, 100], got {truncate}")
        if link not in LINKS:
            raise ValueError(f"link must be one of {LINKS}, got {link!r}")
        if method not in ("likelihood", "balancing"):
            raise ValueError(f"method must be 'likelihood' or 'balancing', got {method!r}")
        if method == "balancing" and estimand != "ATT":
            raise ValueError("method='balancing' targets the ATT; use estimand='ATT'")
        self.estimand = estimand
        self.trim = trim
        self.truncate = truncate
        self.balance_threshold = balance_threshold
        self.link = link
        self.method = method
        self.warnings_: list[str] = []

    @classmethod
    def from_settings(cls, s: ModelSettings, link: Link = "logit") -> PropensityScoreFitter:
        """The ATT fitter the model stage uses: method, trimming, truncation and balance
        threshold from ``s`` (``link`` matters for ``propensity_method="likelihood"`` only, where
        the stage chooses it by cross-validation, see :func:`models.estimators.fit_propensity`)."""
        return cls(
            "ATT",
            trim=s.trim,
            truncate=s.weight_truncation_percentile,
            balance_threshold=s.balance_threshold,
            link=link,
            method=s.propensity_method,
        )

    def fit(
        self,
        x: pd.DataFrame,
        treatment: np.ndarray | pd.Series,
        balance_covariates: pd.DataFrame | None = None,
    ) -> PropensityScoreFitter:
        """Fit on the design ``x``; balance is reported on ``balance_covariates`` (default
        ``x``), e.g. the original covariates when ``x`` holds spline and interaction terms."""
        t = np.asarray(treatment, dtype=int)
        if t.min() == t.max():
            raise ValueError("treatment has one value only: nothing to compare")
        self.columns_ = list(x.columns)
        xv = x.to_numpy(dtype=float)
        self.mean_, self.sd_ = xv.mean(axis=0), xv.std(axis=0)
        z = standardise(xv, self.mean_, self.sd_)
        self.method_ = self.method
        self.link_: Link = self.link
        if self.method == "balancing":
            lam, gap = entropy_balance(z, t)
            self.balance_gap_ = gap
            if gap < 1e-6:
                self.link_ = "logit"
                # intercept: the implied propensities sum to the number exposed
                eta = z @ lam
                lo, hi = -50.0 - eta.max(), 50.0 - eta.min()
                for _ in range(200):
                    mid = (lo + hi) / 2
                    lo, hi = (
                        (mid, hi) if inverse_link(mid + eta, "logit").sum() < t.sum() else (lo, mid)
                    )
                self.params_ = np.r_[(lo + hi) / 2, lam]
            else:
                self.method_ = "likelihood"
                self.warnings_.append(
                    f"exact covariate balance infeasible (imbalance {gap:.2g} SD): propensity "
                    "fitted by maximum likelihood instead"
                )
        if self.method_ == "likelihood":
            self.params_, converged = fit_binary_glm(z, t.astype(float), self.link_)
            if not converged:
                self.warnings_.append("propensity model did not converge")
        ps = inverse_link(self.params_[0] + z @ self.params_[1:], self.link_)
        self.auc_ = float(roc_auc_score(t, ps))
        p = t.mean()
        ps_c = np.clip(ps, 1e-6, 1 - 1e-6)
        # preference score (Walker et al.): propensity adjusted for the exposure prevalence
        logit = np.log(ps_c / (1 - ps_c)) - np.log(p / (1 - p))
        self.preference_ = 1 / (1 + np.exp(-logit))
        self.equipoise_ = float(np.mean((self.preference_ >= 0.3) & (self.preference_ <= 0.7)))
        keep = (ps >= self.trim) & (ps <= 1 - self.trim) if self.trim > 0 else np.ones_like(t, bool)
        self.kept_ = keep
        ps = ps_c
        if self.estimand == "ATT" and self.method_ == "balancing":
            # exp(z . lam) directly: ps / (1 - ps) in floating point loses the exact balance
            odds = np.exp(np.clip(z @ self.params_[1:] - (z @ self.params_[1:]).max(), -700, 0))
            w = np.where(t == 1, 1.0, odds)
            w[t == 0] *= t[keep].sum() / max(w[(t == 0) & keep].sum(), 1e-300)
        elif self.estimand == "ATT":
            w = np.where(t == 1, 1.0, ps / (1 - ps))
            w[t == 0] *= t[keep].sum() / max(w[(t == 0) & keep].sum(), 1e-12)
        else:
            w = np.where(t == 1, p / ps, (1 - p) / (1 - ps))
        if self.truncate is not None:
            cap = np.percentile(w[keep], self.truncate)
            n_capped = int((w > cap).sum())
            w = np.minimum(w, cap)
            if n_capped:
                self.warnings_.append(
                    f"{n_capped} weights truncated at the {self.truncate}th percentile"
                )
        w = np.where(keep, w, 0.0)
        if w.max() > 50 * max(np.median(w[w > 0]), 1e-12):
            self.warnings_.append(f"extreme weights: max {w.max():.1f}")
        ess = w[t == 0].sum() ** 2 / max((w[t == 0] ** 2).sum(), 1e-12)
        self.effective_sample_size_unexposed_ = float(ess)
        self.propensity_, self.weights_, self.treatment_ = ps, w, t
        bx = x if balance_covariates is None else balance_covariates
        bv = bx.to_numpy(dtype=float)
        self.balance_ = pd.DataFrame(
            {
                "covariate": list(bx.columns),
                "smd_before": [smd(bv[:, j], t) for j in range(bv.shape[1])],
                "smd_after": [smd(bv[keep, j], t[keep], w[keep]) for j in range(bv.shape[1])],
            }
        )
        self.balance_["balanced"] = self.balance_["smd_after"].abs() < self.balance_threshold
        if not self.balance_["balanced"].all():
            bad = ", ".join(self.balance_.loc[~self.balance_["balanced"], "covariate"])
            self.warnings_.append(
                f"covariate imbalance after weighting (|SMD| >= {self.balance_threshold}): {bad}"
            )
        return self

    def refit_weights(self, x: pd.DataFrame, treatment: np.ndarray) -> np.ndarray:
        """Weights from refitting this model (same options) on other data, without the
        diagnostics: what a bootstrap replicate needs. Trimming is not applied. The method and
        link are the ones the full-sample fit ended with (``method_``, ``link_``): where exact
        balance was infeasible there, every replicate uses maximum likelihood too."""
        xv = x.to_numpy(dtype=float)
        z = standardise(xv, xv.mean(axis=0), xv.std(axis=0))
        return self._weights_refitted(z, np.asarray(treatment, dtype=int))

    def bootstrap_refitter(
        self, x: pd.DataFrame, treatment: np.ndarray
    ) -> Callable[..., np.ndarray]:
        """``(rows, counts=None) -> weights`` refitted on those rows of ``x`` (this fit's
        design), for :func:`models.effects.bootstrap_weighting_se`. ``counts``: how many times
        each of ``rows`` (then distinct) was drawn; the weights returned are then each row's
        weight summed over its copies (the exposed: their counts), the same as refitting on the
        rows repeated, with about 37% fewer rows in a bootstrap replicate. The design is
        standardised once, with this fit's full-sample means and SDs, instead of once per
        replicate: balancing weights do not depend on the scaling and a likelihood fit's 1e-4
        ridge barely does, and it saves copying the design through pandas in every
        replicate."""
        z = standardise(x[self.columns_].to_numpy(dtype=float), self.mean_, self.sd_)
        t = np.asarray(treatment, dtype=int)

        def refit(rows: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
            if counts is not None and self.truncate is not None:
                # a percentile cap is one of the repeated rows: refit on them, sum per row
                copies = np.repeat(np.arange(len(rows)), np.asarray(counts, dtype=int))
                w = self._weights_refitted(z[rows[copies]], t[rows[copies]])
                return np.bincount(copies, w, len(rows))
            return self._weights_refitted(z[rows], t[rows], counts)

        return refit

    def _weights_refitted(
        self, z: np.ndarray, t: np.ndarray, counts: np.ndarray | None = None
    ) -> np.ndarray:
        """The weights of refitting on ``z``, ``t``; with ``counts`` (no truncation), of
        refitting on the rows repeated that many times, summed per row."""
        c = np.ones(len(t)) if counts is None else np.asarray(counts, dtype=float)
        n1 = t.sum() if counts is None else c[t == 1].sum()
        w = c.copy()
        if self.method_ == "balancing":
            lam, gap = entropy_balance(z, t, init=self.params_[1:], counts=counts)
            if gap < 1e-6:
                a = z[t == 0] @ lam
                e = np.exp(a - a.max()) * c[t == 0]
                w[t == 0] = e * n1 / e.sum()
                return self._truncated(w)
        b, _ = fit_binary_glm(z, t.astype(float), self.link_, init=self.params_, counts=counts)
        ps = np.clip(inverse_link(b[0] + z @ b[1:], self.link_), 1e-6, 1 - 1e-6)
        if self.estimand == "ATT":
            w = np.where(t == 1, 1.0, ps / (1 - ps)) * c
            w[t == 0] *= n1 / max(w[t == 0].sum(), 1e-12)
        else:
            p = t.mean() if counts is None else c @ t / c.sum()
            w = np.where(t == 1, p / ps, (1 - p) / (1 - ps)) * c
        return self._truncated(w)

    def _truncated(self, w: np.ndarray) -> np.ndarray:
        if self.truncate is None:
            return w
        return np.minimum(w, np.percentile(w, self.truncate))

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        """Propensity for new rows of the same design."""
        z = standardise(x[self.columns_].to_numpy(dtype=float), self.mean_, self.sd_)
        return inverse_link(self.params_[0] + z @ self.params_[1:], self.link_)

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "metric": [
                    "auc",
                    "equipoise",
                    "n_exposed",
                    "n_unexposed",
                    "ess_unexposed",
                    "max_abs_smd_before",
                    "max_abs_smd_after",
                    "balance_pass",
                ],
                "value": [
                    self.auc_,
                    self.equipoise_,
                    int(self.treatment_.sum()),
                    int((1 - self.treatment_).sum()),
                    self.effective_sample_size_unexposed_,
                    float(self.balance_["smd_before"].abs().max()),
                    float(self.balance_["smd_after"].abs().max()),
                    float(self.balance_["balanced"].all()),
                ],
            }
        )

    def print_summary(self) -> str:
        return self.summary.to_string(index=False)

    def plot(self, ax: Any = None) -> Any:
        """Preference-score overlap by group."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(6, 4))[1]
        bins = np.linspace(0, 1, 41)
        for g, label in ((1, "exposed"), (0, "unexposed")):
            ax.hist(
                self.preference_[self.treatment_ == g],
                bins=bins,
                alpha=0.5,
                density=True,
                label=label,
            )
        ax.axvspan(0.3, 0.7, color="grey", alpha=0.1)
        ax.set_xlabel("preference score")
        ax.set_ylabel("density")
        ax.set_title(f"Propensity overlap (AUC {self.auc_:.2f}, equipoise {self.equipoise_:.0%})")
        ax.legend()
        return ax

    def plot_balance(self, ax: Any = None) -> Any:
        """Love plot: |SMD| before and after weighting."""
        import matplotlib.pyplot as plt

        b = self.balance_.sort_values("smd_before", key=np.abs)
        ax = ax or plt.subplots(figsize=(6, max(3, 0.25 * len(b))))[1]
        y = np.arange(len(b))
        ax.scatter(b["smd_before"].abs(), y, label="before", marker="o")
        ax.scatter(b["smd_after"].abs(), y, label="after weighting", marker="x")
        ax.axvline(self.balance_threshold, color="red", linestyle="--")
        ax.set_yticks(y, b["covariate"], fontsize=7)
        ax.set_xlabel("|standardised mean difference|")
        ax.legend()
        return ax
