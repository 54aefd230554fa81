"""The model stage of a run: every estimate, diagnostic, figure and release table."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ground.db import connect
from ground.errors import RunStateError
from ground.run_layout import RunLayout
from models.disclosure import (
    WITHHELD,
    DisclosureSettings,
    Release,
    control_release,
    estimate_group,
    km_yearly,
)
from models.effects import (
    Estimate,
    ExposureEffectFitter,
    bootstrap_weighting_se,
    e_value,
    select_outcome_design,
)
from models.propensity import (
    Link,
    PropensityScoreFitter,
    design_matrix,
    flexible_design,
    select_propensity_model,
)
from models.survival import (
    PiecewisePoissonFitter,
    TimeVaryingCoxFitter,
    age_month_intervals,
    kaplan_meier_by_group,
)

log = logging.getLogger(__name__)

Design = Literal["main", "splines", "splines_interactions"]
ADVERSITIES = [
    "physical_abuse",
    "parental_mental_ill_health",
    "parental_substance_misuse",
    "domestic_abuse",
]


class ModelSettings(BaseModel):
    """What to adjust for and how; saved with every run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    covariates: list[str] = Field(
        default_factory=lambda: [
            *ADVERSITIES,
            "parental_learning_disability",
            "disability",
            "deprivation_decile",
            "sex",
            "birth_cohort",
            "age_band_at_index",
            "la_code",
            "prior_ks2_expected",
            "prior_ks2_missing",
            "prior_emergency_admissions",
        ]
    )
    categorical: list[str] = Field(default_factory=lambda: ["sex", "la_code", "age_band_at_index"])
    survival_covariates: list[str] = Field(
        default_factory=lambda: [
            *ADVERSITIES,
            "parental_learning_disability",
            "disability",
            "deprivation_decile",
            "sex_male",
            "birth_cohort",
            "age_at_index",
            # DOMAIN.md's adjustment set also names the local authority and prior attainment /
            # prior health-service use measured before care: as in the education models
            "la_code",
            "prior_ks2_expected",
            "prior_ks2_missing",
            "prior_emergency_admissions",
        ]
    )
    # No truncation by default: where the exposure is near-certain for some children (young at
    # the index date, several recorded adversities) the ATT weights of their few unexposed
    # look-alikes are large, and capping them biases the ATT towards the unadjusted contrast.
    # Extreme weights and the effective sample size are reported instead.
    weight_truncation_percentile: float | None = None
    trim: float = 0.0
    balance_threshold: float = 0.1
    # Propensity and outcome designs: candidates, chosen by cross-validation (see
    # models/propensity.py). "main" is `covariates` as given; "splines" adds restricted cubic
    # splines (`spline_knots`), the capped count of recorded adversities (`count_of`);
    # "splines_interactions" adds `interaction_with` x each of `interaction_terms`.
    # "balancing": logistic propensity fitted so the weighted unexposed means of the
    # `balancing_design` columns equal the exposed means exactly (entropy balancing, ATT-CBPS);
    # "likelihood": the (design, link) with the smallest cross-validated deviance among
    # `propensity_designs` x `propensity_links`, fitted by maximum likelihood.
    propensity_method: Literal["balancing", "likelihood"] = "balancing"
    balancing_design: Design = "main"
    propensity_designs: tuple[Design, ...] = ("main", "splines", "splines_interactions")
    propensity_links: tuple[Link, ...] = ("logit", "cloglog")
    outcome_designs: tuple[Design, ...] = ("main", "splines", "splines_interactions")
    spline_knots: dict[str, int] = Field(
        default_factory=lambda: {"age_at_index": 5, "deprivation_decile": 4}
    )
    count_of: list[str] = Field(
        default_factory=lambda: [*ADVERSITIES, "parental_learning_disability"]
    )
    interaction_with: str | None = "age_at_index"
    interaction_terms: list[str] = Field(
        default_factory=lambda: [
            "n_recorded_adversities",
            "deprivation_decile",
            "physical_abuse",
            "prior_ks2_missing",
        ]
    )
    cv_folds: int = Field(5, ge=2, le=20)
    cv_seed: int = 20240601
    # Standard errors of the IPW and AIPW estimates: bootstrap (children resampled within
    # exposure groups, weights and outcome models refitted) with this many replicates; 0 = the
    # analytic ones (stacked sandwich for balancing IPW, influence function for AIPW).
    bootstrap_replicates: int = Field(200, ge=0)
    # Standard errors of the time-varying Cox model: "robust" (sandwich clustered on the child,
    # Lin & Wei 1989; right when the model leaves out prognostic factors, as any adjustment
    # set of recorded covariates does) or "model" (inverse information).
    cox_standard_errors: Literal["robust", "model"] = "model"
    disclosure: DisclosureSettings = DisclosureSettings()

    @field_validator("bootstrap_replicates")
    @classmethod
    def _enough_replicates(cls, v: int) -> int:
        # the bootstrap SE is used only when at least 20 replicates are usable
        if 0 < v < 20:
            raise ValueError(f"{v} replicates: use 0 (analytic standard errors) or at least 20")
        return v


@dataclass
class ModelSummary:
    estimates: pd.DataFrame
    warnings: list[str]
    row_counts: dict[str, int] = field(default_factory=dict)
    # release/estimates.csv as written (text, disclosure-controlled): what artifacts show
    released: pd.DataFrame | None = None
    disclosure_label: str = ""

    def to_markdown(self) -> str:
        """The main estimates as released (withheld ones stay withheld), for the artifact."""
        rel = self.released if self.released is not None else pd.DataFrame()
        lines = [
            f"Released estimates ({self.disclosure_label}).",
            "",
            "| outcome | method | scale | estimate | 95% CI | note |",
            "|---|---|---|---:|---|---|",
        ]
        if len(rel):
            main = rel[rel["method"].isin(["aipw", "cox_tv"]) & (rel["contrast"] == "cla_vs_nla")]
            lines += [
                f"| {r.outcome} | {r.method} | {r.scale} | {r.estimate} | "
                + (f"{r.ci_low} to {r.ci_high}" if r.estimate != WITHHELD else "")
                + f" | {r.note} |"
                for r in main.itertuples()
            ]
        if self.warnings:
            lines += ["", "Fit warnings: see results/diagnostics.csv (secure)."]
        return "\n".join(lines)


def _load(layout: RunLayout) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    if not layout.analysis_db.exists():
        raise RunStateError(f"{layout.analysis_db} not found: run `cohort build` first")
    con = connect(layout.analysis_db, read_only=True)
    try:
        children = con.sql("SELECT * FROM cohort.children ORDER BY person_key").df()
        pt = con.sql(
            "SELECT * FROM cohort.person_time ORDER BY person_key, outcome, start_day"
        ).df()
        sy = con.sql("SELECT * FROM cohort.school_years ORDER BY person_key, academic_year").df()
    except Exception as exc:
        raise RunStateError(
            f"cohort tables missing in {layout.analysis_db}: run `cohort build` ({exc})"
        ) from None
    finally:
        con.close()
    # care before year 11 depends on the time left between the index date and year 11, which is
    # not linear in age: a categorical year of age at index lets the propensity model follow it
    children["age_band_at_index"] = np.floor(children["age_at_index"]).clip(0, 17).astype(int)
    children["sex_male"] = (children["sex"] == "M").astype(float)
    return children, pt, sy


def _savefig(fig: Any, path: os.PathLike[str] | str) -> None:
    fig.savefig(path, dpi=90, metadata={"Software": None}, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def candidate_designs(df: pd.DataFrame, s: ModelSettings) -> dict[str, pd.DataFrame]:
    """The ladder of designs the propensity and outcome models choose from."""
    main = design_matrix(df, s.covariates, s.categorical)
    flex = {
        "splines": dict(splines=s.spline_knots, count_of=s.count_of),
        "splines_interactions": dict(
            splines=s.spline_knots,
            count_of=s.count_of,
            interact_with=s.interaction_with,
            interaction_terms=s.interaction_terms,
        ),
    }
    out = {"main": main}
    for name, kw in flex.items():
        out[name] = flexible_design(df, main, **kw)  # type: ignore[arg-type]
    return out


def fit_propensity(
    df: pd.DataFrame,
    t: np.ndarray,
    s: ModelSettings,
    diag: list[dict[str, Any]],
    analysis: str,
) -> tuple[PropensityScoreFitter, dict[str, pd.DataFrame], str]:
    """Fit the propensity model the settings ask for; return it, the candidate designs and the
    name of the design it was fitted on.

    Balance is reported on the richest design (main covariates plus spline, count and
    interaction terms), so a balancing fit, exact on the main covariates by construction, is
    still checked on their non-linear functions.
    """
    designs = candidate_designs(df, s)
    design: str = s.balancing_design
    link: Link = "logit"
    if s.propensity_method == "likelihood":
        sel = select_propensity_model(
            {k: designs[k] for k in s.propensity_designs},
            t,
            s.propensity_links,
            s.cv_folds,
            s.cv_seed,
        )
        best = sel[sel["selected"]].iloc[0]
        design, link = str(best["design"]), "cloglog" if best["link"] == "cloglog" else "logit"
        for r in sel.itertuples():
            diag.append(
                {
                    "analysis": analysis,
                    "item": f"cv_deviance:{r.design}:{r.link}"
                    + (":selected" if r.selected else ""),
                    "value": float(r.cv_deviance),
                    "warning": "",
                }
            )
    ps = PropensityScoreFitter(
        "ATT",
        trim=s.trim,
        truncate=s.weight_truncation_percentile,
        balance_threshold=s.balance_threshold,
        link=link,
        method=s.propensity_method,
    ).fit(designs[design], t, balance_covariates=designs["splines_interactions"])
    diag.append(
        {
            "analysis": analysis,
            "item": f"fitted:{ps.method_}:{design}:{ps.link_}",
            "value": float(designs[design].shape[1]),
            "warning": "",
        }
    )
    return ps, designs, design


def choose_outcome_design(
    designs: dict[str, pd.DataFrame],
    y: np.ndarray,
    t: np.ndarray,
    binary: bool,
    s: ModelSettings,
    diag: list[dict[str, Any]] | None = None,
    outcome: str = "",
) -> str:
    """Name of the design (among ``s.outcome_designs``) whose untreated-outcome model has the
    smallest cross-validated prediction error in the unexposed (see
    :func:`models.effects.select_outcome_design`); the candidates go to ``diag``."""
    osel = select_outcome_design(
        {k: designs[k] for k in s.outcome_designs}, y, t, binary, s.cv_folds, s.cv_seed
    )
    for r in osel.itertuples():
        if diag is not None:
            diag.append(
                {
                    "analysis": f"outcome_model:{outcome}",
                    "item": f"cv_error:{r.design}" + (":selected" if r.selected else ""),
                    "value": float(r.cv_error),
                    "warning": "",
                }
            )
    return str(osel.loc[osel["selected"], "design"].iloc[0])


def education_estimates(
    children: pd.DataFrame,
    s: ModelSettings,
    diag: list[dict[str, Any]],
    balance: list[pd.DataFrame],
) -> tuple[list[Estimate], dict[str, PropensityScoreFitter]]:
    """KS4 score and level 2 inclusive: CLA-vs-NLA contrasts by four methods."""
    ed = children[children["ks4_score"].notna()].reset_index(drop=True)
    out: list[Estimate] = []
    fitted: dict[str, PropensityScoreFitter] = {}
    contrasts = {
        "cla_vs_nla": ("long", "short"),
        "long_vs_nla": ("long",),
        "short_vs_nla": ("short",),
    }
    # the untreated-outcome model is fitted in the same unexposed children for every contrast:
    # choose its design once per outcome
    outcome_design: dict[str, str] = {}
    t_any = ed["ks4_care_group"].isin(["long", "short"]).to_numpy().astype(int)
    ed_designs = candidate_designs(ed, s)
    for outcome, binary in (("ks4_score", False), ("ks4_level2_inclusive", True)):
        if t_any.sum() == len(t_any) or ed.empty:
            outcome_design[outcome] = "main"
            continue
        outcome_design[outcome] = choose_outcome_design(
            ed_designs, ed[outcome].to_numpy(float), t_any, binary, s, diag, outcome
        )
    for contrast, exposed in contrasts.items():
        sub = ed[ed["ks4_care_group"].isin([*exposed, "none"])].reset_index(drop=True)
        t = sub["ks4_care_group"].isin(exposed).to_numpy().astype(int)
        if t.sum() < 2 or (1 - t).sum() < 2:
            diag.append(
                {
                    "analysis": contrast,
                    "item": "skipped",
                    "value": float(t.sum()),
                    "warning": "too few exposed or unexposed children",
                }
            )
            continue
        ps, designs, ps_design = fit_propensity(sub, t, s, diag, f"propensity:{contrast}")
        # exact balance (the stacked sandwich's premise) survives neither truncation nor trimming
        exact = ps.method_ == "balancing" and s.weight_truncation_percentile is None and s.trim == 0
        x = designs["main"]
        dropped = set(s.covariates) - {
            c.split("_")[0] if c not in sub.columns else c for c in x.columns
        }
        fitted[contrast] = ps
        for r in ps.summary.itertuples():
            diag.append(
                {
                    "analysis": f"propensity:{contrast}",
                    "item": r.metric,
                    "value": float(r.value),
                    "warning": "",
                }
            )
        for w in ps.warnings_:
            diag.append(
                {
                    "analysis": f"propensity:{contrast}",
                    "item": "warning",
                    "value": np.nan,
                    "warning": w,
                }
            )
        if dropped:
            log.debug("constant covariates dropped: %s", dropped)
        balance.append(ps.balance_.assign(contrast=contrast))
        education_outcomes = (
            ("ks4_score", False, "mean_difference"),
            ("ks4_level2_inclusive", True, "risk_difference"),
        )
        boot: dict[tuple[str, str], float] = {}
        if s.bootstrap_replicates > 0:
            x_ps = designs[ps_design]
            boot = bootstrap_weighting_se(
                t,
                ps.bootstrap_refitter(x_ps, t),
                {
                    o: (sub[o].to_numpy(float), designs[outcome_design[o]], b)
                    for o, b, _scale in education_outcomes
                },
                s.bootstrap_replicates,
                s.cv_seed,
            )
            diag.append(
                {
                    "analysis": f"propensity:{contrast}",
                    "item": "bootstrap_replicates",
                    "value": float(s.bootstrap_replicates),
                    "warning": ""
                    if all(np.isfinite(v) for v in boot.values())
                    else "too few usable bootstrap replicates: analytic standard errors kept",
                }
            )
        for outcome, binary, scale in education_outcomes:
            y = sub[outcome].to_numpy(float)
            x_out = designs[outcome_design[outcome]]
            # children with the outcome per group: disclosure control needs them
            events: dict[str, Any] = (
                {
                    "events_exposed": int(np.nansum(y[t == 1])),
                    "events_unexposed": int(np.nansum(y[t == 0])),
                }
                if binary
                else {}
            )
            for method in ("unadjusted", "regression", "ipw", "aipw"):
                try:
                    f = ExposureEffectFitter(method, binary=binary).fit(  # type: ignore[arg-type]
                        y,
                        t,
                        x_out,
                        ps.weights_,
                        balanced_on=designs[ps_design] if exact and method == "ipw" else None,
                    )
                except Exception as exc:
                    out.append(
                        Estimate(
                            outcome,
                            contrast,
                            method,
                            scale,
                            np.nan,
                            np.nan,
                            np.nan,
                            np.nan,
                            int(t.sum()),
                            int((1 - t).sum()),
                            f"failed: {type(exc).__name__}: {exc}",
                            **events,
                        )
                    )
                    continue
                if np.isfinite(boot.get((outcome, method), np.nan)):
                    f.se_ = boot[(outcome, method)]
                est = f.result(outcome, contrast, scale)
                est.events_exposed = events.get("events_exposed")
                est.events_unexposed = events.get("events_unexposed")
                est.warning = "; ".join(
                    filter(
                        None, [est.warning, *(ps.warnings_ if method in ("ipw", "aipw") else [])]
                    )
                )
                out.append(est)
                if binary and method == "regression":
                    lo, hi = f.odds_ratio_ci_
                    out.append(
                        Estimate(
                            outcome,
                            contrast,
                            "regression",
                            "odds_ratio",
                            f.odds_ratio_,
                            lo,
                            hi,
                            f.odds_ratio_p_,
                            int(t.sum()),
                            int((1 - t).sum()),
                            est.warning,
                            **events,
                        )
                    )
    return out, fitted


def care_characteristics(children: pd.DataFrame, s: ModelSettings) -> list[Estimate]:
    """Placement moves and age at entry among children looked after before year 11."""
    import statsmodels.api as sm

    cla = children[
        children["ks4_score"].notna() & children["ks4_care_group"].isin(["long", "short"])
    ].reset_index(drop=True)
    out: list[Estimate] = []
    if len(cla) < 20:
        return out
    x = design_matrix(cla, s.covariates, s.categorical)
    for term, contrast in (
        ("ks4_placement_moves", "per_placement_move"),
        ("age_at_entry", "per_year_age_at_entry"),
    ):
        design = pd.concat(
            [
                cla[[term]].astype(float),
                (cla["ks4_care_group"] == "long").astype(float).rename("long"),
                x,
            ],
            axis=1,
        )
        design = sm.add_constant(design.loc[:, design.std() > 0], has_constant="add")
        res = sm.OLS(cla["ks4_score"].astype(float), design).fit(cov_type="HC1")
        b, se = float(res.params[term]), float(res.bse[term])
        out.append(
            Estimate(
                "ks4_score",
                contrast,
                "regression",
                "mean_difference",
                b,
                b - 1.96 * se,
                b + 1.96 * se,
                float(res.pvalues[term]),
                len(cla),
                0,
            )
        )
    return out


def effect_modification(children: pd.DataFrame, s: ModelSettings) -> list[Estimate]:
    """Does each adversity's association with KS4 differ between CLA and NLA?"""
    import statsmodels.api as sm

    ed = children[children["ks4_score"].notna()].reset_index(drop=True)
    t = ed["ks4_care_group"].isin(["long", "short"]).astype(float)
    out: list[Estimate] = []
    for adv in ADVERSITIES:
        others = [c for c in s.covariates if c != adv]
        x = design_matrix(ed, others, s.categorical)
        inter = (t * ed[adv]).rename("interaction")
        design = sm.add_constant(
            pd.concat([t.rename("cla"), ed[adv].astype(float), inter, x], axis=1),
            has_constant="add",
        )
        design = design.loc[:, (design.std() > 0) | (design.columns == "const")]
        if "interaction" not in design:
            continue
        res = sm.OLS(ed["ks4_score"].astype(float), design).fit(cov_type="HC1")
        b, se = float(res.params["interaction"]), float(res.bse["interaction"])
        out.append(
            Estimate(
                "ks4_score",
                f"{adv}_x_cla",
                "regression",
                "mean_difference",
                b,
                b - 1.96 * se,
                b + 1.96 * se,
                float(res.pvalues["interaction"]),
                int(t.sum()),
                int((1 - t).sum()),
            )
        )
        for label, sel in (("cla", t == 1), ("nla", t == 0)):
            sub = ed[sel.to_numpy()].reset_index(drop=True)
            xs = design_matrix(sub, others, s.categorical)
            d = sm.add_constant(
                pd.concat([sub[[adv]].astype(float), xs], axis=1), has_constant="add"
            )
            d = d.loc[:, (d.std() > 0) | (d.columns == "const")]
            if adv not in d or len(sub) < 20:
                continue
            r = sm.OLS(sub["ks4_score"].astype(float), d).fit(cov_type="HC1")
            b, se = float(r.params[adv]), float(r.bse[adv])
            out.append(
                Estimate(
                    "ks4_score",
                    f"{adv}_in_{label}",
                    "regression",
                    "mean_difference",
                    b,
                    b - 1.96 * se,
                    b + 1.96 * se,
                    float(r.pvalues[adv]),
                    int(sub[adv].sum()),
                    int((1 - sub[adv]).sum()),
                )
            )
    return out


def absence_gee(children: pd.DataFrame, sy: pd.DataFrame, s: ModelSettings) -> list[Estimate]:
    """Absence across school years, looked-after years vs other years (GEE, child clusters)."""
    import statsmodels.api as sm

    if sy.empty:
        return []
    covs = ["deprivation_decile", *ADVERSITIES, "disability", "sex_male"]
    d = sy.merge(children[["person_key", *covs]], on="person_key").dropna(subset=["absence_rate"])
    d = d[d["years_from_index"].between(-3, 6)].reset_index(drop=True)
    if d["looked_after_this_year"].nunique() < 2:
        return []
    x = sm.add_constant(
        pd.concat(
            [
                d[["looked_after_this_year", "years_from_index", "age"]].astype(float),
                d[covs].astype(float),
            ],
            axis=1,
        ),
        has_constant="add",
    )
    res = sm.GEE(
        d["absence_rate"].astype(float),
        x,
        groups=d["person_key"],
        family=sm.families.Gaussian(),
        cov_struct=sm.cov_struct.Exchangeable(),
    ).fit()
    b, se = float(res.params["looked_after_this_year"]), float(res.bse["looked_after_this_year"])
    n_exp = int(d.loc[d["looked_after_this_year"] == 1, "person_key"].nunique())
    return [
        Estimate(
            "absence_rate",
            "looked_after_year",
            "gee",
            "mean_difference",
            b,
            b - 1.96 * se,
            b + 1.96 * se,
            float(res.pvalues["looked_after_this_year"]),
            n_exp,
            int(d["person_key"].nunique()) - n_exp,
        )
    ]


def survival_estimates(
    children: pd.DataFrame,
    pt: pd.DataFrame,
    s: ModelSettings,
    diag: list[dict[str, Any]],
    restrict: pd.Series | None = None,
    suffix: str = "",
) -> list[Estimate]:
    """Time-varying Cox (adjusted, unadjusted) and piecewise Poisson, per outcome."""
    out: list[Estimate] = []
    kids = (children if restrict is None else children[restrict]).reset_index(drop=True)
    # categorical covariates (the local authority): strata of the Cox model (own baseline
    # hazard per level), dummies (first level dropped) in the Poisson model
    strata = [c for c in s.categorical if c in s.survival_covariates]
    x = design_matrix(kids, s.survival_covariates, strata)
    covs = list(x.columns)
    cox_covs = [c for c in s.survival_covariates if c not in strata]
    kids_x = pd.concat([kids[["person_key", *strata]], x], axis=1)
    cox, robust = TimeVaryingCoxFitter, s.cox_standard_errors == "robust"
    for outcome in sorted(pt["outcome"].unique()):
        rows = age_month_intervals(
            pt[(pt["outcome"] == outcome) & pt["person_key"].isin(kids["person_key"])], kids
        )
        rows = rows.drop(columns=["age_at_index"]).merge(kids_x, on="person_key")
        n_exp = int(rows.loc[rows["looked_after"] == 1, "person_key"].nunique())
        n_unexp = int(rows["person_key"].nunique()) - n_exp
        exposed_rows = rows["looked_after"] == 1
        events = {
            "events_exposed": int(rows.loc[exposed_rows, "event"].sum()),
            "events_unexposed": int(rows.loc[~exposed_rows, "event"].sum()),
        }
        specs: list[tuple[str, Callable[[], Any]]] = [
            ("cox_tv", lambda: cox(robust=robust).fit(rows, cox_covs, strata=strata))  # noqa: B023
        ]
        if not suffix:
            specs += [
                ("cox_tv_unadjusted", lambda: TimeVaryingCoxFitter().fit(rows, [])),  # noqa: B023
                ("poisson_pw", lambda: PiecewisePoissonFitter().fit(rows, covs)),  # noqa: B023
            ]
        for method, fit in specs:
            try:
                f = fit()
                out.append(
                    Estimate(
                        outcome,
                        "cla_vs_nla",
                        method + suffix,
                        "hazard_ratio",
                        f.hazard_ratio_,
                        f.ci_[0],
                        f.ci_[1],
                        f.p_value_,
                        n_exp,
                        n_unexp,
                        "; ".join(f.warnings_),
                        **events,
                    )
                )
            except Exception as exc:
                out.append(
                    Estimate(
                        outcome,
                        "cla_vs_nla",
                        method + suffix,
                        "hazard_ratio",
                        np.nan,
                        np.nan,
                        np.nan,
                        np.nan,
                        n_exp,
                        n_unexp,
                        f"failed: {type(exc).__name__}: {exc}",
                        **events,
                    )
                )
        if not suffix:
            diag.append(_ph_check(rows, cox_covs, outcome, strata))
    return out


def _ph_check(
    rows: pd.DataFrame, covs: list[str], outcome: str, strata: list[str] | None = None
) -> dict[str, Any]:
    """Proportional hazards for care: add looked_after x log(age) and test it (Wald)."""
    r = rows.assign(la_x_logage=rows["looked_after"] * np.log1p(rows["start"] / 12.0))
    try:
        f = TimeVaryingCoxFitter().fit(r, [*covs, "la_x_logage"], strata=strata)
        p = float(f.summary.loc["la_x_logage", "p"])
        warn = "proportional hazards for care rejected at 0.01" if p < 0.01 else ""
    except Exception as exc:
        p, warn = float("nan"), f"PH check failed: {type(exc).__name__}"
    return {
        "analysis": f"proportional_hazards:{outcome}",
        "item": "p_looked_after_x_log_age",
        "value": p,
        "warning": warn,
    }


def table_one(children: pd.DataFrame, weights: np.ndarray | None) -> pd.DataFrame:
    """Baseline characteristics by group: counts and percentages, weighted percentages."""
    rows = []
    cla = (children["group"] == "CLA").to_numpy()
    items: list[tuple[str, np.ndarray]] = [
        (a, children[a].to_numpy(float))
        for a in [*ADVERSITIES, "parental_learning_disability", "disability"]
    ]
    items += [("female", (children["sex"] == "F").to_numpy(float))]
    items += [
        (f"deprivation_quintile_{q}", (children["deprivation_quintile"] == q).to_numpy(float))
        for q in range(1, 6)
    ]
    missing_dep = children["deprivation_quintile"].isna().to_numpy()
    if missing_dep.any():  # so that the quintile rows add up to the children row
        items += [("deprivation_quintile_missing", missing_dep.astype(float))]
    for name, v in items:
        row: dict[str, Any] = {"characteristic": name}
        for label, sel in (("CLA", cla), ("NLA", ~cla)):
            row[f"n_{label}"] = int(v[sel].sum())
            row[f"pct_{label}"] = round(100 * float(v[sel].mean()), 1) if sel.any() else np.nan
            if weights is not None:
                row[f"weighted_pct_{label}"] = (
                    round(100 * float(np.average(v[sel], weights=weights[sel])), 1)
                    if weights[sel].sum() > 0
                    else np.nan
                )
        rows.append(row)
    rows.append({"characteristic": "children", "n_CLA": int(cla.sum()), "n_NLA": int((~cla).sum())})
    return pd.DataFrame(rows)


def run_models(
    *,
    layout: RunLayout,
    settings: ModelSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelSummary:
    """Fit every model on the run's cohort tables; write results/, figures and release/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = settings or ModelSettings()
    report = progress or (lambda m: log.info("%s", m))
    clock: dict[str, Any] = {"name": "", "t0": time.perf_counter()}

    def step(name: str) -> None:
        """Announce a step; log how long the previous one took (the log, never results/)."""
        now = time.perf_counter()
        if clock["name"]:
            log.info("model step done in %.1f s: %s", now - float(clock["t0"]), clock["name"])
        clock.update(name=name, t0=now)
        if name:
            report(name)

    layout.ensure()
    (layout.results_dir / "model_settings.yaml").write_text(
        yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    children, pt, sy = _load(layout)
    if children.empty:
        raise RunStateError("cohort.children is empty: nothing to model")
    diag: list[dict[str, Any]] = []
    balance: list[pd.DataFrame] = []
    step("education outcomes: propensity, weights, regression, IPW, AIPW")
    est, _ = education_estimates(children, s, diag, balance)
    step("care characteristics and effect modification")
    est += care_characteristics(children, s)
    est += effect_modification(children, s)
    step("absence across school years (GEE)")
    est += absence_gee(children, sy, s)
    step("time-varying Cox and piecewise Poisson")
    est += survival_estimates(children, pt, s, diag)
    step("sensitivity: high-quality links only")
    hq = children["high_quality_links"] == 1
    if hq.sum() < len(children):
        est += survival_estimates(children, pt, s, diag, restrict=hq, suffix="_high_quality_links")
        # analytic standard errors here: the restriction is read for its point estimates,
        # and a second bootstrap would double the stage's cost at national size
        no_boot = s.model_copy(update={"bootstrap_replicates": 0})
        e2, _ = education_estimates(children[hq].reset_index(drop=True), no_boot, [], [])
        est += [
            e.__class__(**{**e.row(), "method": e.method + "_high_quality_links"})
            for e in e2
            if e.method == "aipw"
        ]
    else:
        diag.append(
            {
                "analysis": "sensitivity",
                "item": "high_quality_links",
                "value": float(len(children)),
                "warning": "all links high quality: restriction changes nothing",
            }
        )
    estimates = pd.DataFrame([e.row() for e in est])
    sd_ks4 = float(children["ks4_score"].std()) if children["ks4_score"].notna().any() else None
    sens = estimates[estimates["method"].isin(["aipw", "cox_tv", "regression"])].copy()
    sens["e_value"] = [
        e_value(r.estimate, r.ci_low, r.ci_high, r.scale, sd_ks4) for r in sens.itertuples()
    ]
    warnings_list = [
        f"{r.outcome}/{r.contrast}/{r.method}: {r.warning}"
        for r in estimates.itertuples()
        if r.warning
    ]
    warnings_list += [f"{d['analysis']}: {d['warning']}" for d in diag if d["warning"]]
    step("writing results, figures and release tables")
    res = layout.results_dir
    estimates.to_csv(res / "estimates.csv", index=False, float_format="%.6g")
    sens[["outcome", "contrast", "method", "scale", "estimate", "e_value"]].to_csv(
        res / "sensitivity.csv", index=False, float_format="%.6g"
    )
    pd.concat(balance).to_csv(
        res / "balance.csv", index=False, float_format="%.6g"
    ) if balance else None
    pd.DataFrame(diag, columns=["analysis", "item", "value", "warning"]).to_csv(
        res / "diagnostics.csv", index=False, float_format="%.6g"
    )
    # overall CLA-vs-NLA propensity for table 1 and weighted KM
    t_all = (children["group"] == "CLA").to_numpy().astype(int)
    w_all = None
    if 0 < t_all.sum() < len(t_all):
        ps_all, _, _ = fit_propensity(children, t_all, s, [], "propensity:ever_looked_after")
        w_all = ps_all.weights_
        _savefig(ps_all.plot().figure, layout.figures_dir / "propensity_overlap.png")
        _savefig(ps_all.plot_balance().figure, layout.figures_dir / "love_plot.png")
    t1 = table_one(children, w_all)
    t1.to_csv(res / "table1.csv", index=False)
    release = _release(layout, estimates, t1, children, pt, s)
    _figures(layout, children, pt, estimates, w_all, plt, release)
    step("")
    counts = {"results.estimates": len(estimates)}
    return ModelSummary(
        estimates,
        warnings_list,
        counts,
        released=release.tables["estimates"],
        disclosure_label=s.disclosure.label,
    )


def _figures(
    layout: RunLayout,
    children: pd.DataFrame,
    pt: pd.DataFrame,
    estimates: pd.DataFrame,
    w_all: np.ndarray | None,
    plt: Any,
    release: Release,
) -> None:
    """Forest plots of the released estimates (withheld ones left out), full-precision
    Kaplan-Meier curves (secure) and their coarsened, released versions from km_yearly.csv."""
    groups = [
        estimate_group(*k)
        for k in zip(estimates["outcome"], estimates["contrast"], estimates["method"], strict=True)
    ]
    kept = estimates[[g not in release.withheld for g in groups]]
    main = kept[
        (kept["contrast"] == "cla_vs_nla")
        & kept["method"].isin(
            ["unadjusted", "ipw", "aipw", "cox_tv_unadjusted", "cox_tv", "poisson_pw"]
        )
    ].dropna(subset=["estimate"])
    for scale, fname in (
        ("hazard_ratio", "forest_hazard_ratios.png"),
        ("mean_difference", "forest_ks4.png"),
        ("risk_difference", "forest_level2.png"),
    ):
        m = main[main["scale"] == scale]
        if m.empty:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(m) + 1.2))
        y = np.arange(len(m))
        ax.errorbar(
            m["estimate"],
            y,
            xerr=[m["estimate"] - m["ci_low"], m["ci_high"] - m["estimate"]],
            fmt="o",
        )
        ax.axvline(1.0 if scale == "hazard_ratio" else 0.0, color="grey", linestyle="--")
        if scale == "hazard_ratio":
            ax.set_xscale("log")
        ax.set_yticks(y, [f"{r.outcome} ({r.method})" for r in m.itertuples()], fontsize=8)
        ax.set_title(f"CLA vs NLA: {scale.replace('_', ' ')}")
        _savefig(fig, layout.figures_dir / fname)
    km = release.tables.get("km_yearly", pd.DataFrame())
    for outcome in KM_OUTCOMES:
        e = _first_events(children, pt, outcome)
        fig, axes = plt.subplots(1, 2 if w_all is not None else 1, figsize=(10, 4), squeeze=False)
        kaplan_meier_by_group(children, e, None, axes[0][0], f"{outcome}: Kaplan-Meier")
        if w_all is not None:
            kaplan_meier_by_group(children, e, w_all, axes[0][1], f"{outcome}: weighted")
        _savefig(fig, layout.figures_dir / f"km_{outcome}.png")
        fig, ax = plt.subplots(figsize=(6, 4))
        for g in ("CLA", "NLA"):
            k = km[(km["outcome"] == outcome) & (km["group"] == g)] if len(km) else km
            if len(k):
                ax.step(k["year"], k["cumulative_incidence_pct"], where="post", label=g)
        ax.set_xlabel("whole years from first social-services contact")
        ax.set_ylabel("cumulative incidence (%)")
        ax.set_title(f"{outcome}: Kaplan-Meier at whole years (disclosure-controlled)")
        ax.legend()
        _savefig(fig, layout.figures_dir / f"km_{outcome}_released.png")


KM_OUTCOMES = ("self_harm", "emergency_admission")


def _first_events(children: pd.DataFrame, pt: pd.DataFrame, outcome: str) -> pd.DataFrame:
    ev = pt[(pt["event"] == 1) & (pt["outcome"] == outcome)][["person_key", "stop_day"]].merge(
        children[["person_key", "index_date"]], on="person_key"
    )
    ev["event_date"] = pd.to_datetime(ev["index_date"]) + pd.to_timedelta(
        ev["stop_day"] - 1, unit="D"
    )
    return ev[["person_key", "event_date"]]


def _km_yearly_table(
    children: pd.DataFrame, pt: pd.DataFrame, d: DisclosureSettings
) -> pd.DataFrame:
    """Coarsened Kaplan-Meier cumulative incidence per outcome and group (see
    :func:`models.disclosure.km_yearly`); the same durations as the secure curves."""
    parts = []
    for outcome in KM_OUTCOMES:
        df = children[["person_key", "group", "index_date", "followup_end"]].merge(
            _first_events(children, pt, outcome), on="person_key", how="left"
        )
        start = pd.to_datetime(df["index_date"])
        t_end = (pd.to_datetime(df["followup_end"]) - start).dt.days + 1
        t_ev = (pd.to_datetime(df["event_date"]) - start).dt.days + 1
        duration = np.where(t_ev.notna(), t_ev, t_end) / 365.25
        for g in ("CLA", "NLA"):
            sel = (df["group"] == g).to_numpy()
            k = km_yearly(duration[sel], t_ev.notna().to_numpy()[sel], d)
            parts.append(k.assign(outcome=outcome, group=g))
    cols = ["outcome", "group", "year", "at_risk", "cumulative_incidence_pct"]
    return pd.concat(parts)[cols] if parts else pd.DataFrame(columns=cols)


def _release(
    layout: RunLayout,
    estimates: pd.DataFrame,
    t1: pd.DataFrame,
    children: pd.DataFrame,
    pt: pd.DataFrame,
    s: ModelSettings,
) -> Release:
    """Write release/: every count table of the run controlled together (secondary
    suppression across tables, see :mod:`models.disclosure`), the coarsened KM table and a
    README stating the rules and the label."""
    rel = layout.release_dir
    con = connect(layout.analysis_db, read_only=True)
    try:
        att = con.sql("SELECT * FROM cohort.attrition ORDER BY step").df()
    finally:
        con.close()
    release = control_release(
        {
            "attrition": att,
            "table1_counts": t1[["characteristic", "n_CLA", "n_NLA"]].fillna(0),
            "estimates": estimates,
        },
        s.disclosure,
    )
    release.tables["km_yearly"] = _km_yearly_table(children, pt, s.disclosure)
    for stale in rel.glob("*.csv"):
        stale.unlink()
    for name, df in release.tables.items():
        df.to_csv(rel / f"{name}.csv", index=False)
    (rel / "README.txt").write_text(release.readme(), encoding="utf-8")
    return release
