"""Does care's effect differ by pre-care adversity? Stratum ATTs and a doubly robust learner.

Two questions, two tools:

* :func:`stratum_atts`: the doubly robust ATT within each stratum of a modifier (children with
  / without a recorded adversity, in the most deprived deciles or not) and the difference
  between the two strata, with influence-function standard errors. The nuisance models (the
  propensity's ATT weights and the untreated-outcome model ``m0``) are fitted once on the whole
  cohort, with the modifier among their covariates, and the ATT is taken within the stratum:

      ATT_s = mean over exposed in s of (y - m0)
              - sum over unexposed in s of w (y - m0) / sum over unexposed in s of w

  (the weights normalised within the stratum: a weight model fitted on everyone need not sum
  to the stratum's exposed count). Its influence function per child is
  ``1[s] {t (r - mu1_s) / P(t=1, s) - (1 - t) w (r - mu0_s) / E[(1 - t) w 1[s]]}`` with
  ``r = y - m0``; the two strata are disjoint, so the difference's influence function is the
  difference of theirs. Nuisance models are treated as fixed (as the pipeline's AIPW), or
  cross-fitted (``nuisance="boosting"``, :func:`models.effects.cross_fitted_nuisances`), where
  that is what double machine learning's standard errors assume.

* :class:`DRLearner`: the conditional effect as a function of a few summary variables
  (recorded adversity count, deprivation) by Kennedy's (2023) DR-learner: cross-fitted
  propensity e, untreated and treated outcome models m0, m1 (scikit-learn gradient boosting),
  the pseudo-outcome

      phi = m1 - m0 + t (y - m1) / e - (1 - t) (y - m0) / (1 - e)

  and a second-stage regression of phi on the summary variables. Its summaries are the mean
  pseudo-outcome per group (a doubly robust ATE within the group: *all* children of the group,
  exposed or not, so not the ATT) and a calibration check: the best linear predictor test
  (Chernozhukov, Demirer, Duflo & Fernandez-Val 2018): regress phi on 1 and the cross-fitted
  prediction's deviation from its mean; a slope near 1 says the predicted differences are real
  and of the right size, near 0 that they are noise. The cost is bounded: at most
  ``max_rows`` children (a random subsample) and ``max_iter`` boosting rounds per model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from models.folds import content_folds

Z = 1.959963984540054


@dataclass(frozen=True)
class StratumEffect:
    """One stratum's ATT (or the difference between two strata) with its SE."""

    label: str
    estimate: float
    se: float
    n_exposed: int
    n_unexposed: int

    @property
    def ci(self) -> tuple[float, float]:
        return self.estimate - Z * self.se, self.estimate + Z * self.se

    @property
    def p_value(self) -> float:
        if not np.isfinite(self.se) or self.se <= 0:
            return float("nan")
        return float(2 * stats.norm.sf(abs(self.estimate / self.se)))


def _stratum_influence(
    y: np.ndarray, t: np.ndarray, m0: np.ndarray, w: np.ndarray, in_s: np.ndarray
) -> tuple[float, np.ndarray]:
    """The stratum's doubly robust ATT and each child's influence-function value (zero outside
    the stratum). ``w``: the unexposed children's ATT weights (odds of exposure)."""
    n = len(y)
    r = y - m0
    exp_s = (t == 1) & in_s
    unexp_s = (t == 0) & in_s
    w0 = np.where(unexp_s, w, 0.0)
    mu1 = float(r[exp_s].mean())
    mu0 = float(np.sum(w0 * r) / np.sum(w0))
    psi = np.where(exp_s, (r - mu1) / (exp_s.sum() / n), 0.0) - w0 * (r - mu0) / (w0.sum() / n)
    return mu1 - mu0, psi


def stratum_atts(
    y: np.ndarray,
    t: np.ndarray,
    m0: np.ndarray,
    w: np.ndarray,
    in_stratum: np.ndarray,
    labels: tuple[str, str] = ("with", "without"),
    min_children: int = 2,
) -> list[StratumEffect]:
    """Doubly robust ATT among children in the stratum, among those outside it, and the
    difference (in minus out), each with its influence-function SE. Empty list when either
    stratum has fewer than ``min_children`` exposed or unexposed children (or no positive
    weight among its unexposed)."""
    y, t = np.asarray(y, float), np.asarray(t, int)
    m0, w = np.asarray(m0, float), np.asarray(w, float)
    s = np.asarray(in_stratum, bool)
    n = len(y)
    out: list[StratumEffect] = []
    psis: list[np.ndarray] = []
    for label, sel in zip(labels, (s, ~s), strict=True):
        n1, n0 = int(((t == 1) & sel).sum()), int(((t == 0) & sel).sum())
        if n1 < min_children or n0 < min_children or w[(t == 0) & sel].sum() <= 0:
            return []
        est, psi = _stratum_influence(y, t, m0, w, sel)
        psis.append(psi)
        out.append(StratumEffect(label, est, float(np.sqrt(np.sum(psi**2)) / n), n1, n0))
    diff = psis[0] - psis[1]
    out.append(
        StratumEffect(
            f"{labels[0]}_minus_{labels[1]}",
            out[0].estimate - out[1].estimate,
            float(np.sqrt(np.sum(diff**2)) / n),
            int((t == 1).sum()),
            int((t == 0).sum()),
        )
    )
    return out


# ---- the DR-learner --------------------------------------------------------------------------


@dataclass
class DRLearner:
    """Kennedy's DR-learner of the conditional effect E[Y(1) - Y(0) | V] (see the module
    docstring). ``folds``: cross-fitting folds; ``max_iter``: boosting rounds per nuisance
    model; ``max_rows``: children used at most (a random subsample above it);
    ``propensity_clip``: e is kept in [clip, 1 - clip] in the pseudo-outcome."""

    folds: int = 5
    max_iter: int = 100
    max_rows: int = 20_000
    propensity_clip: float = 0.01
    seed: int = 0

    def fit(
        self, x: pd.DataFrame, y: np.ndarray, t: np.ndarray, v: pd.DataFrame, binary: bool
    ) -> DRLearner:
        """``x``: the adjustment design; ``v``: the summary variables (a few columns, each with
        few levels) the effect is described by."""
        from models.effects import cross_fitted_nuisances

        rng = np.random.default_rng(self.seed)
        y, t = np.asarray(y, float), np.asarray(t, int)
        rows = np.arange(len(y))
        if len(rows) > self.max_rows:
            rows = np.sort(rng.choice(rows, self.max_rows, replace=False))
        xv, yv, tv = x.to_numpy(float)[rows], y[rows], t[rows]
        self.v_ = v.iloc[rows].reset_index(drop=True)
        nu = cross_fitted_nuisances(
            xv,
            yv,
            tv,
            binary,
            folds=self.folds,
            max_iter=self.max_iter,
            seed=self.seed,
            treated_outcome=True,
        )
        e = np.clip(nu.propensity, self.propensity_clip, 1 - self.propensity_clip)
        m0, m1 = nu.untreated, nu.treated
        assert m1 is not None
        self.pseudo_outcome_ = m1 - m0 + tv * (yv - m1) / e - (1 - tv) * (yv - m0) / (1 - e)
        self.n_ = len(rows)
        self.prediction_ = self._second_stage_cross_fitted(rng)
        return self

    def _second_stage_cross_fitted(self, rng: np.random.Generator) -> np.ndarray:
        """Out-of-fold predictions of the pseudo-outcome from ``v`` (group means of the
        training folds per cell of ``v``; the overall training mean for a cell not seen)."""
        key = self.v_.astype(str).agg("|".join, axis=1).to_numpy()
        phi = self.pseudo_outcome_
        codes = self.v_.apply(lambda c: pd.factorize(c, sort=True)[0]).to_numpy()
        seed = int(rng.integers(2**31))
        fold = content_folds(np.column_stack([phi, codes]), self.folds, seed)  # models.folds
        pred = np.empty(self.n_)
        for f in range(self.folds):
            tr, te = fold != f, fold == f
            means = pd.Series(phi[tr]).groupby(key[tr]).mean()
            pred[te] = pd.Series(key[te]).map(means).fillna(phi[tr].mean()).to_numpy()
        return pred

    def by_group(self, column: str) -> pd.DataFrame:
        """Mean conditional effect per level of one summary variable: the mean pseudo-outcome
        and its SE (SD / sqrt(n)), with the number of children."""
        g = pd.DataFrame({"level": self.v_[column].to_numpy(), "phi": self.pseudo_outcome_})
        out = g.groupby("level", sort=True)["phi"].agg(["mean", "std", "size"]).reset_index()
        out["se"] = out["std"] / np.sqrt(out["size"])
        return out.rename(columns={"mean": "estimate", "size": "n"})[
            ["level", "estimate", "se", "n"]
        ]

    def calibration(self) -> dict[str, float]:
        """Best linear predictor test: phi ~ b1 + b2 (tau_hat - mean tau_hat), HC1 SEs.
        ``b2`` near 1: the heterogeneity the learner predicts is real and the right size;
        ``b2_p``: test of b2 = 0 (no heterogeneity detected)."""
        import statsmodels.api as sm

        dev = self.prediction_ - self.prediction_.mean()
        if np.allclose(dev, 0):
            return {"b1": float(self.pseudo_outcome_.mean()), "b2": float("nan")}
        res = sm.OLS(self.pseudo_outcome_, np.c_[np.ones(self.n_), dev]).fit(cov_type="HC1")
        return {
            "b1": float(res.params[0]),
            "b1_se": float(res.bse[0]),
            "b2": float(res.params[1]),
            "b2_se": float(res.bse[1]),
            "b2_p": float(res.pvalues[1]),
        }
