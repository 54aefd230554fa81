"""Propensity score, weights and covariate balance, in lifelines' fit / summary / plot style."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score


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
    """

    def __init__(
        self,
        estimand: Literal["ATT", "ATE"] = "ATT",
        trim: float = 0.0,
        truncate: float | None = 99.5,
        balance_threshold: float = 0.1,
    ) -> None:
        if estimand not in ("ATT", "ATE"):
            raise ValueError(f"estimand must be 'ATT' or 'ATE', got {estimand!r}")
        if not 0 <= trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {trim}")
        if truncate is not None and not 50 < truncate <= 100:
            raise ValueError(f"truncate must be a percentile in (50, 100], got {truncate}")
        self.estimand = estimand
        self.trim = trim
        self.truncate = truncate
        self.balance_threshold = balance_threshold
        self.warnings_: list[str] = []

    def fit(self, x: pd.DataFrame, treatment: np.ndarray | pd.Series) -> PropensityScoreFitter:
        t = np.asarray(treatment, dtype=int)
        if t.min() == t.max():
            raise ValueError("treatment has one value only: nothing to compare")
        self.columns_ = list(x.columns)
        xv = x.to_numpy(dtype=float)
        self.mean_, self.sd_ = xv.mean(axis=0), xv.std(axis=0)
        z = (xv - self.mean_) / np.where(self.sd_ > 0, self.sd_, 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.model_ = LogisticRegression(C=1e4, max_iter=2000).fit(z, t)
        if any("converge" in str(w.message).lower() for w in caught):
            self.warnings_.append("propensity model did not converge")
        ps = self.model_.predict_proba(z)[:, 1]
        self.auc_ = float(roc_auc_score(t, ps))
        p = t.mean()
        # preference score (Walker et al.): propensity adjusted for the exposure prevalence
        logit = np.log(ps / (1 - ps)) - np.log(p / (1 - p))
        self.preference_ = 1 / (1 + np.exp(-logit))
        self.equipoise_ = float(np.mean((self.preference_ >= 0.3) & (self.preference_ <= 0.7)))
        keep = (ps >= self.trim) & (ps <= 1 - self.trim) if self.trim > 0 else np.ones_like(t, bool)
        self.kept_ = keep
        ps = np.clip(ps, 1e-6, 1 - 1e-6)
        if self.estimand == "ATT":
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
        self.balance_ = pd.DataFrame(
            {
                "covariate": self.columns_,
                "smd_before": [smd(xv[:, j], t) for j in range(xv.shape[1])],
                "smd_after": [smd(xv[keep, j], t[keep], w[keep]) for j in range(xv.shape[1])],
            }
        )
        self.balance_["balanced"] = self.balance_["smd_after"].abs() < self.balance_threshold
        if not self.balance_["balanced"].all():
            bad = ", ".join(self.balance_.loc[~self.balance_["balanced"], "covariate"])
            self.warnings_.append(
                f"covariate imbalance after weighting (|SMD| >= {self.balance_threshold}): {bad}"
            )
        return self

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
