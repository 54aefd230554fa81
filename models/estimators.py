"""The estimators an analysis can name (``schemas.analyses.Analysis.estimator``), one class each.

Each class is registered by name with :func:`register`, checks its own ``options`` (a pydantic
model, ``Options``), is built from the run's settings (``from_settings``) and has one entry point
in lifelines' style: ``fit(cohort)`` sets ``estimates_`` (rows of results/estimates.csv),
``diagnostics_`` (rows of results/diagnostics.csv) and ``balance_`` (covariate balance tables),
and ``summary`` shows the estimates. Adding an estimator is one class here plus one entry in the
study config's ``analyses:`` section.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ground.errors import ConfigError
from models.effects import (
    Estimate,
    ExposureEffectFitter,
    Method,
    Nuisance,
    bootstrap_sd,
    bootstrap_stratum_draws,
    bootstrap_weighting_se,
    fit_exchangeable_gee,
    select_outcome_design,
)
from models.propensity import (
    PropensityScoreFitter,
    design_matrix,
    effective_sample_size,
    flexible_design,
    select_propensity_model,
)
from models.sensitivity import events_per_covariate_warning
from models.settings import ADVERSITIES, Link, ModelSettings
from models.survival import (
    PiecewisePoissonFitter,
    TimeVaryingCoxFitter,
    age_month_intervals,
    merge_unexposed_intervals,
)
from schemas.analyses import EVERY_TIME_TO_EVENT_OUTCOME, Analysis

log = logging.getLogger(__name__)

Diagnostic = dict[str, Any]


def diagnostic(analysis: str, item: str, value: float, warning: str = "") -> Diagnostic:
    """One row of results/diagnostics.csv."""
    return {"analysis": analysis, "item": item, "value": value, "warning": warning}


# ---- the cohort the estimators read ---------------------------------------------------------


@dataclass
class CohortData:
    """The run's cohort tables (as :func:`models.run.load_cohort` returns them), the populations
    analyses run in, and what several analyses share (the outcome design chosen per outcome)."""

    children: pd.DataFrame
    person_time: pd.DataFrame
    school_years: pd.DataFrame
    # (population, outcome, exposure, unexposed levels) -> name of the chosen outcome design
    outcome_designs: dict[tuple[str, str, str, tuple[str, ...]], str] = field(default_factory=dict)
    # outcome -> its person_time rows as the survival models read them (:meth:`survival_time`)
    _survival_time: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def population(self, name: str) -> pd.DataFrame | None:
        """The children of a population, or None when it is the whole cohort under another name
        (every link high quality: the restriction changes nothing, see :meth:`skipped_note`)."""
        if name == "all":
            return self.children
        hq = self.children["high_quality_links"] == 1
        if hq.sum() == len(self.children):
            return None
        return self.children[hq].reset_index(drop=True)

    def survival_time(self, outcome: str, population: str = "all") -> pd.DataFrame:
        """The person_time rows of ``outcome`` for the children of ``population``, with the
        runs of not-looked-after rows merged (:func:`models.survival.merge_unexposed_intervals`:
        the same fits on fewer rows). Built once per outcome and shared by the analyses."""
        if outcome not in self._survival_time:
            pt = self.person_time
            mine = pt[
                (pt["outcome"] == outcome) & pt["person_key"].isin(self.children["person_key"])
            ]
            self._survival_time[outcome] = merge_unexposed_intervals(mine)
        rows = self._survival_time[outcome]
        if population == "all":
            return rows
        kids = self.population(population)
        keys = kids["person_key"] if kids is not None else self.children["person_key"]
        return rows[rows["person_key"].isin(keys)].reset_index(drop=True)

    def skipped_note(self, name: str) -> Diagnostic:
        """The diagnostic written once when a population's analyses are skipped."""
        return diagnostic(
            "sensitivity",
            name,
            float(len(self.children)),
            "all links high quality: restriction changes nothing",
        )


# ---- designs, propensity and outcome models, shared with the notebooks ------------------------


def candidate_designs(df: pd.DataFrame, s: ModelSettings) -> dict[str, pd.DataFrame]:
    """The ladder of designs the propensity and outcome models choose from."""
    main = design_matrix(df, s.covariates, s.categorical)
    return {
        "main": main,
        "splines": flexible_design(df, main, splines=s.spline_knots, count_of=s.count_of),
        "splines_interactions": flexible_design(
            df,
            main,
            splines=s.spline_knots,
            count_of=s.count_of,
            interact_with=s.interaction_with,
            interaction_terms=s.interaction_terms,
        ),
    }


def fit_propensity(
    df: pd.DataFrame,
    t: np.ndarray,
    s: ModelSettings,
    diag: list[Diagnostic] | None = None,
    analysis: str = "propensity",
) -> tuple[PropensityScoreFitter, dict[str, pd.DataFrame], str]:
    """Fit the propensity model the settings ask for; return it, the candidate designs and the
    name of the design it was fitted on (candidates and the fit go to ``diag``).

    Balance is reported on the richest design (main covariates plus spline, count and
    interaction terms), so a balancing fit, exact on the main covariates by construction, is
    still checked on their non-linear functions.
    """
    diag = [] if diag is None else diag
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
            selected = ":selected" if r.selected else ""
            diag.append(
                diagnostic(
                    analysis, f"cv_deviance:{r.design}:{r.link}{selected}", float(r.cv_deviance)
                )
            )
    ps = PropensityScoreFitter.from_settings(s, link=link).fit(
        designs[design], t, balance_covariates=designs["splines_interactions"]
    )
    diag.append(
        diagnostic(
            analysis, f"fitted:{ps.method_}:{design}:{ps.link_}", float(designs[design].shape[1])
        )
    )
    return ps, designs, design


def choose_outcome_design(
    designs: dict[str, pd.DataFrame],
    y: np.ndarray,
    t: np.ndarray,
    binary: bool,
    s: ModelSettings,
    diag: list[Diagnostic] | None = None,
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
            selected = ":selected" if r.selected else ""
            diag.append(
                diagnostic(
                    f"outcome_model:{outcome}", f"cv_error:{r.design}{selected}", float(r.cv_error)
                )
            )
    return str(osel.loc[osel["selected"], "design"].iloc[0])


def is_binary(y: np.ndarray) -> bool:
    """A 0/1 outcome (its effect is a risk difference) rather than a score."""
    return bool(np.isin(y[~np.isnan(y)], (0.0, 1.0)).all())


# ---- the estimator classes ----------------------------------------------------------------------


class Options(BaseModel):
    """An estimator's options: typed, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AnalysisEstimator:
    """One kind of analysis. Subclasses set ``name`` and ``Options`` and implement
    :meth:`_fit`; :func:`register` makes them nameable in the study config."""

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options
    # where the declared outcomes are looked up before anything is fitted: columns of
    # cohort.children or cohort.school_years, or outcomes of cohort.person_time
    outcomes_in: ClassVar[Literal["children", "school_years", "person_time"]] = "children"
    # the :class:`CohortData` cache this estimator fills and reads ("outcome_designs",
    # "survival_time"), if any: analyses sharing one are fitted in the same process, in their
    # declared order, so a value is computed once and its diagnostics land where they would in
    # a single process (:func:`models.run.run_analyses`)
    shares: ClassVar[str | None] = None

    def __init__(self, analysis: Analysis, settings: ModelSettings) -> None:
        self.analysis = analysis
        self.settings = settings
        try:
            self.options = self.Options.model_validate(analysis.options)
        except ValidationError as exc:
            msgs = [
                f"`options.{'.'.join(str(p) for p in e['loc'])}`: {e['msg']}" for e in exc.errors()
            ]
            raise ConfigError(
                f"analysis {analysis.name!r} (estimator {self.name}): " + "; ".join(msgs)
            ) from None
        self.estimates_: list[Estimate] = []
        self.diagnostics_: list[Diagnostic] = []
        self.balance_: list[pd.DataFrame] = []

    @classmethod
    def from_settings(cls, s: ModelSettings, analysis: Analysis) -> AnalysisEstimator:
        return cls(analysis, s)

    def check_outcomes(self, cohort: CohortData) -> None:
        """A ConfigError naming the analysis when a declared outcome is not in the cohort."""
        a = self.analysis
        if isinstance(a.outcomes, str):
            if self.outcomes_in == "person_time":
                return
            raise ConfigError(
                f"analysis {a.name!r} (estimator {self.name}): `outcomes` must list columns; "
                f"{a.outcomes} is for time-to-event estimators"
            )
        if not a.outcomes:
            raise ConfigError(f"analysis {a.name!r} (estimator {self.name}): `outcomes` is empty")
        known = (
            set(cohort.person_time["outcome"].unique())
            if self.outcomes_in == "person_time"
            else set(getattr(cohort, self.outcomes_in).columns)
        )
        if self.outcomes_in == "person_time" and cohort.person_time.empty:
            return
        missing = [o for o in a.outcomes if o not in known]
        if missing:
            raise ConfigError(
                f"analysis {a.name!r}: outcome(s) {', '.join(missing)} not in cohort."
                f"{self.outcomes_in}; check `outcomes` in the study config's analyses"
            )

    def fit(self, cohort: CohortData) -> AnalysisEstimator:
        """Run the analysis on ``cohort``: every estimate goes to ``estimates_`` with the
        population's suffix on its method (``aipw_high_quality_links``)."""
        self._fit(cohort)
        suffix = self.analysis.method_suffix
        for e in self.estimates_:
            e.method += suffix
        return self

    def _fit(self, cohort: CohortData) -> None:
        raise NotImplementedError

    @property
    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([e.row() for e in self.estimates_])

    def population(self, cohort: CohortData) -> pd.DataFrame:
        kids = cohort.population(self.analysis.population)
        if kids is None:  # the runner skips such analyses
            raise ValueError(f"population {self.analysis.population} is the whole cohort")
        return kids


ESTIMATORS: dict[str, type[AnalysisEstimator]] = {}


def register(cls: type[AnalysisEstimator]) -> type[AnalysisEstimator]:
    """Class decorator: make ``cls`` available to the study config under ``cls.name``."""
    if cls.name in ESTIMATORS:
        raise ValueError(f"two estimators named {cls.name!r}")
    ESTIMATORS[cls.name] = cls
    return cls


def estimator_for(analysis: Analysis, s: ModelSettings) -> AnalysisEstimator:
    """The estimator a declaration names, with its options checked (a ConfigError naming the
    analysis and the key otherwise)."""
    cls = ESTIMATORS.get(analysis.estimator)
    if cls is None:
        raise ConfigError(
            f"analysis {analysis.name!r}: unknown estimator {analysis.estimator!r}; known: "
            + ", ".join(sorted(ESTIMATORS))
        )
    return cls.from_settings(s, analysis)


class ExposureEffectOptions(Options):
    exposure: str = "ks4_care_group"
    exposed: tuple[str, ...]
    unexposed: tuple[str, ...] = ("none",)
    methods: tuple[Method, ...] = ("unadjusted", "regression", "ipw", "aipw")
    # bootstrap standard errors for ipw / aipw when the settings ask for replicates
    bootstrap: bool = True


@register
class ExposureEffect(AnalysisEstimator):
    """ATT of being in the ``exposed`` levels of ``exposure`` vs the ``unexposed`` ones, among
    children with every outcome measured: one propensity model (:func:`fit_propensity`) shared
    by the outcomes, each outcome by ``methods`` (:class:`models.effects.ExposureEffectFitter`);
    a binary outcome is a risk difference plus, for ``regression``, an odds ratio."""

    name = "exposure_effect"
    shares = "outcome_designs"
    Options = ExposureEffectOptions
    options: ExposureEffectOptions

    def _fit(self, cohort: CohortData) -> None:
        s, o, a = self.settings, self.options, self.analysis
        outcomes = list(a.outcomes)
        contrast, diag = a.contrast, self.diagnostics_
        kids = self.population(cohort)
        ed = kids[kids[outcomes].notna().all(axis=1)].reset_index(drop=True)
        outcome_design = self._outcome_designs(cohort, ed, outcomes)
        sub = ed[ed[o.exposure].isin([*o.exposed, *o.unexposed])].reset_index(drop=True)
        t = sub[o.exposure].isin(o.exposed).to_numpy().astype(int)
        if t.sum() < 2 or (1 - t).sum() < 2:
            diag.append(
                diagnostic(
                    contrast, "skipped", float(t.sum()), "too few exposed or unexposed children"
                )
            )
            return
        ps, designs, ps_design = fit_propensity(sub, t, s, diag, f"propensity:{contrast}")
        # exact balance (the stacked sandwich's premise) survives neither truncation nor trimming
        exact = ps.method_ == "balancing" and s.weight_truncation_percentile is None and s.trim == 0
        for r in ps.summary.itertuples():
            diag.append(diagnostic(f"propensity:{contrast}", r.metric, float(r.value)))
        for w in ps.warnings_:
            diag.append(diagnostic(f"propensity:{contrast}", "warning", np.nan, w))
        self.balance_.append(ps.balance_.assign(contrast=contrast))
        ys = {out: sub[out].to_numpy(float) for out in outcomes}
        binary = {out: is_binary(ys[out]) for out in outcomes}
        boot: dict[tuple[str, str], float] = {}
        if s.bootstrap_replicates > 0 and o.bootstrap:
            boot = bootstrap_weighting_se(
                t,
                ps.bootstrap_refitter(designs[ps_design], t),
                {out: (ys[out], designs[outcome_design[out]], binary[out]) for out in outcomes},
                s.bootstrap_replicates,
                s.cv_seed,
            )
            usable = all(np.isfinite(v) for v in boot.values())
            diag.append(
                diagnostic(
                    f"propensity:{contrast}",
                    "bootstrap_replicates",
                    float(s.bootstrap_replicates),
                    ""
                    if usable
                    else "too few usable bootstrap replicates: analytic standard errors kept",
                )
            )
        for out in outcomes:
            y = ys[out]
            scale = "risk_difference" if binary[out] else "mean_difference"
            # children with the outcome per group: disclosure control needs them
            events: dict[str, Any] = (
                {
                    "events_exposed": int(np.nansum(y[t == 1])),
                    "events_unexposed": int(np.nansum(y[t == 0])),
                }
                if binary[out]
                else {}
            )
            for method in o.methods:
                try:
                    f = ExposureEffectFitter.from_settings(s, method, binary=binary[out]).fit(
                        y,
                        t,
                        designs[outcome_design[out]],
                        ps.weights_,
                        balanced_on=designs[ps_design] if exact and method == "ipw" else None,
                    )
                except Exception as exc:
                    self.estimates_.append(
                        failed(out, contrast, method, scale, t, f"{type(exc).__name__}: {exc}")
                    )
                    self.estimates_[-1].events_exposed = events.get("events_exposed")
                    self.estimates_[-1].events_unexposed = events.get("events_unexposed")
                    continue
                if np.isfinite(boot.get((out, method), np.nan)):
                    f.se_ = boot[(out, method)]
                est = f.result(out, contrast, scale)
                est.events_exposed = events.get("events_exposed")
                est.events_unexposed = events.get("events_unexposed")
                weighted = method in ("ipw", "aipw")
                est.warning = "; ".join(
                    filter(None, [est.warning, *(ps.warnings_ if weighted else [])])
                )
                self.estimates_.append(est)
                if binary[out] and method == "regression":
                    lo, hi = f.odds_ratio_ci_
                    self.estimates_.append(
                        Estimate(
                            out,
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

    def _outcome_designs(
        self, cohort: CohortData, ed: pd.DataFrame, outcomes: list[str]
    ) -> dict[str, str]:
        """The untreated-outcome model is fitted in the same unexposed children for every
        contrast: its design is chosen once per population and outcome (cached on ``cohort``)."""
        o = self.options
        t_any = (~ed[o.exposure].isin(o.unexposed)).to_numpy().astype(int)
        designs: dict[str, pd.DataFrame] | None = None
        chosen: dict[str, str] = {}
        for out in outcomes:
            key = (self.analysis.population, out, o.exposure, o.unexposed)
            if key not in cohort.outcome_designs:
                if t_any.sum() == len(t_any) or ed.empty:
                    cohort.outcome_designs[key] = "main"
                else:
                    designs = designs or candidate_designs(ed, self.settings)
                    y = ed[out].to_numpy(float)
                    cohort.outcome_designs[key] = choose_outcome_design(
                        designs, y, t_any, is_binary(y), self.settings, self.diagnostics_, out
                    )
            chosen[out] = cohort.outcome_designs[key]
        return chosen


def failed(
    outcome: str, contrast: str, method: str, scale: str, t: np.ndarray, why: str
) -> Estimate:
    """The row of an estimate whose fit raised: no numbers, the reason in ``warning``."""
    nan = float("nan")
    return Estimate(
        outcome,
        contrast,
        method,
        scale,
        nan,
        nan,
        nan,
        nan,
        int(t.sum()),
        int((1 - t).sum()),
        f"failed: {why}",
    )


def _ols_term(y: pd.Series, design: pd.DataFrame, term: str) -> tuple[float, float, float]:
    """Coefficient, robust (HC1) SE and p value of ``term`` in an OLS fit."""
    import statsmodels.api as sm

    res = sm.OLS(y.astype(float), design).fit(cov_type="HC1")
    return float(res.params[term]), float(res.bse[term]), float(res.pvalues[term])


def _regression_estimate(
    outcome: str, contrast: str, b: float, se: float, p: float, n1: int, n0: int
) -> Estimate:
    return Estimate(
        outcome,
        contrast,
        "regression",
        "mean_difference",
        b,
        b - 1.96 * se,
        b + 1.96 * se,
        p,
        n1,
        n0,
    )


class CareCharacteristicOptions(Options):
    term: str


@register
class CareCharacteristic(AnalysisEstimator):
    """Among children looked after before year 11 (long or short care) with the outcome: the
    outcome's change per unit of a characteristic of their care (``term``), adjusted for long
    care and the covariates (OLS, HC1)."""

    name = "care_characteristic"
    Options = CareCharacteristicOptions
    options: CareCharacteristicOptions

    def _fit(self, cohort: CohortData) -> None:
        import statsmodels.api as sm

        s, term, outcome = self.settings, self.options.term, self.analysis.outcomes[0]
        kids = self.population(cohort)
        cla = kids[
            kids[outcome].notna() & kids["ks4_care_group"].isin(["long", "short"])
        ].reset_index(drop=True)
        if len(cla) < 20:
            return
        x = design_matrix(cla, s.covariates, s.categorical)
        design = pd.concat(
            [
                cla[[term]].astype(float),
                (cla["ks4_care_group"] == "long").astype(float).rename("long"),
                x,
            ],
            axis=1,
        )
        design = sm.add_constant(design.loc[:, design.std() > 0], has_constant="add")
        b, se, p = _ols_term(cla[outcome], design, term)
        self.estimates_.append(
            _regression_estimate(outcome, self.analysis.contrast, b, se, p, len(cla), 0)
        )


class EffectModificationOptions(Options):
    modifiers: tuple[str, ...] = tuple(ADVERSITIES)


@register
class EffectModification(AnalysisEstimator):
    """Does each modifier's association with the outcome differ between CLA and NLA? Per
    modifier: the interaction (``{m}_x_cla``) and the association within each group
    (``{m}_in_cla``, ``{m}_in_nla``), OLS with HC1 standard errors."""

    name = "effect_modification"
    Options = EffectModificationOptions
    options: EffectModificationOptions

    def _fit(self, cohort: CohortData) -> None:
        import statsmodels.api as sm

        s, outcome = self.settings, self.analysis.outcomes[0]
        kids = self.population(cohort)
        ed = kids[kids[outcome].notna()].reset_index(drop=True)
        t = ed["ks4_care_group"].isin(["long", "short"]).astype(float)
        y = ed[outcome]
        for adv in self.options.modifiers:
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
            b, se, p = _ols_term(y, design, "interaction")
            self.estimates_.append(
                _regression_estimate(
                    outcome, f"{adv}_x_cla", b, se, p, int(t.sum()), int((1 - t).sum())
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
                b, se, p = _ols_term(sub[outcome], d, adv)
                n_with, n_without = int(sub[adv].sum()), int((1 - sub[adv]).sum())
                self.estimates_.append(
                    _regression_estimate(outcome, f"{adv}_in_{label}", b, se, p, n_with, n_without)
                )


class AbsenceGEEOptions(Options):
    # the exposure column of cohort.school_years: `looked_after_this_year` (0/1: looked after
    # on at least one day of the academic year) or `looked_after_share` (the share of the year
    # looked after: the coefficient is the effect of a full year in care, the estimand a world
    # whose effect grows with the time in care answers; see docs/cohort.md)
    exposure: Literal["looked_after_this_year", "looked_after_share"] = "looked_after_this_year"


@register
class AbsenceGEE(AnalysisEstimator):
    """The outcome across school years (three before to six after the index date), years
    looked after vs other years (or per share of the year looked after, option ``exposure``):
    GEE with exchangeable correlation within the child."""

    name = "absence_gee"
    outcomes_in = "school_years"
    Options = AbsenceGEEOptions
    options: AbsenceGEEOptions

    def _fit(self, cohort: CohortData) -> None:
        import statsmodels.api as sm

        sy, outcome = cohort.school_years, self.analysis.outcomes[0]
        if sy.empty:
            return
        covs = ["deprivation_decile", *ADVERSITIES, "disability", "sex_male"]
        kids = self.population(cohort)
        d = sy.merge(kids[["person_key", *covs]], on="person_key").dropna(subset=[outcome])
        d = d[d["years_from_index"].between(-3, 6)].reset_index(drop=True)
        term = self.options.exposure
        if d["looked_after_this_year"].nunique() < 2:
            return
        x = sm.add_constant(
            pd.concat(
                [
                    d[[term, "years_from_index", "age"]].astype(float),
                    d[covs].astype(float),
                ],
                axis=1,
            ),
            has_constant="add",
        )
        # statsmodels' GEE(family=Gaussian(), cov_struct=Exchangeable()), vectorised
        res = fit_exchangeable_gee(
            d[outcome].to_numpy(float), x.to_numpy(float), d["person_key"].to_numpy()
        )
        j = list(x.columns).index(term)
        b, se = float(res.params[j]), float(res.bse[j])
        n_exp = int(d.loc[d["looked_after_this_year"] == 1, "person_key"].nunique())
        self.estimates_.append(
            Estimate(
                outcome,
                self.analysis.contrast,
                "gee",
                "mean_difference",
                b,
                b - 1.96 * se,
                b + 1.96 * se,
                float(res.pvalues[j]),
                n_exp,
                int(d["person_key"].nunique()) - n_exp,
            )
        )


SurvivalModel = Literal["cox_tv", "cox_tv_unadjusted", "poisson_pw"]


class TimeVaryingSurvivalOptions(Options):
    models: tuple[SurvivalModel, ...] = ("cox_tv", "cox_tv_unadjusted", "poisson_pw")
    # test proportional hazards for care (looked_after x log age, Wald) per outcome
    proportional_hazards_check: bool = True


@register
class TimeVaryingSurvival(AnalysisEstimator):
    """Hazard of each outcome with care as a time-varying exposure, on age-month intervals:
    ``cox_tv`` (adjusted time-varying Cox; categorical covariates as strata),
    ``cox_tv_unadjusted``, ``poisson_pw`` (piecewise-exponential Poisson, the scalable check)."""

    name = "time_varying_survival"
    shares = "survival_time"
    outcomes_in = "person_time"
    Options = TimeVaryingSurvivalOptions
    options: TimeVaryingSurvivalOptions

    def _fit(self, cohort: CohortData) -> None:
        s, pt = self.settings, cohort.person_time
        kids = self.population(cohort).reset_index(drop=True)
        # categorical covariates (the local authority): strata of the Cox model (own baseline
        # hazard per level), dummies (first level dropped) in the Poisson model
        strata = [c for c in s.categorical if c in s.survival_covariates]
        x = design_matrix(kids, s.survival_covariates, strata)
        covs = list(x.columns)
        cox_covs = [c for c in s.survival_covariates if c not in strata]
        kids_x = pd.concat([kids[["person_key", *strata]], x], axis=1)
        robust = s.cox_standard_errors == "robust"
        fitters: dict[str, Callable[[pd.DataFrame], Any]] = {
            "cox_tv": lambda rows: TimeVaryingCoxFitter(robust=robust).fit(
                rows, cox_covs, strata=strata
            ),
            "cox_tv_unadjusted": lambda rows: TimeVaryingCoxFitter().fit(rows, []),
            "poisson_pw": lambda rows: PiecewisePoissonFitter().fit(rows, covs),
        }
        n_strata = int(kids[strata].drop_duplicates().shape[0]) if strata else 0
        outcomes = self.analysis.outcomes
        if outcomes == EVERY_TIME_TO_EVENT_OUTCOME:
            outcomes = tuple(sorted(pt["outcome"].unique()))
        for outcome in outcomes:
            rows = age_month_intervals(
                cohort.survival_time(outcome, self.analysis.population), kids
            )
            rows = rows.drop(columns=["age_at_index"]).merge(kids_x, on="person_key")
            n_exp = int(rows.loc[rows["looked_after"] == 1, "person_key"].nunique())
            n_unexp = int(rows["person_key"].nunique()) - n_exp
            exposed_rows = rows["looked_after"] == 1
            events = {
                "events_exposed": int(rows.loc[exposed_rows, "event"].sum()),
                "events_unexposed": int(rows.loc[~exposed_rows, "event"].sum()),
            }
            for model in self.options.models:
                nan, warning = float("nan"), ""
                hr, lo, hi, p = nan, nan, nan, nan
                try:
                    f = fitters[model](rows)
                    hr, (lo, hi), p = f.hazard_ratio_, f.ci_, f.p_value_
                    warning = "; ".join(f.warnings_)
                except Exception as exc:
                    warning = f"failed: {type(exc).__name__}: {exc}"
                epv = events_per_covariate_warning(
                    events["events_exposed"] + events["events_unexposed"],
                    # care plus the adjustment set (the Poisson model's dummies included)
                    1 + {"cox_tv": len(cox_covs), "poisson_pw": len(covs)}.get(model, 0),
                    n_strata if model == "cox_tv" else 0,
                )
                warning = "; ".join(filter(None, [warning, epv]))
                self.estimates_.append(
                    Estimate(
                        outcome,
                        self.analysis.contrast,
                        model,
                        "hazard_ratio",
                        hr,
                        lo,
                        hi,
                        p,
                        n_exp,
                        n_unexp,
                        warning,
                        **events,
                    )
                )
            if self.options.proportional_hazards_check:
                self.diagnostics_.append(
                    proportional_hazards_check(rows, cox_covs, outcome, strata)
                )


def proportional_hazards_check(
    rows: pd.DataFrame, covs: list[str], outcome: str, strata: list[str] | None = None
) -> Diagnostic:
    """Proportional hazards for care: add looked_after x log(age) and test it (Wald)."""
    r = rows.assign(la_x_logage=rows["looked_after"] * np.log1p(rows["start"] / 12.0))
    try:
        f = TimeVaryingCoxFitter().fit(r, [*covs, "la_x_logage"], strata=strata)
        p = float(f.summary.loc["la_x_logage", "p"])
        warn = "proportional hazards for care rejected at 0.01" if p < 0.01 else ""
    except Exception as exc:
        p, warn = float("nan"), f"PH check failed: {type(exc).__name__}"
    return diagnostic(f"proportional_hazards:{outcome}", "p_looked_after_x_log_age", p, warn)


@register
class KaplanMeier(AnalysisEstimator):
    """Cumulative incidence of a first event per group (CLA / NLA), unweighted and ATT-weighted:
    no estimates; :mod:`models.outputs` draws its figures and writes release/km_yearly.csv for
    the declared outcomes."""

    name = "kaplan_meier"
    outcomes_in = "person_time"

    def _fit(self, cohort: CohortData) -> None:
        """Nothing to fit: the declared outcomes were checked against cohort.person_time."""


# ---- g-methods for care entry as a time-varying treatment (issue #20 items 2, 3; H8) --------


class SequentialTrialsOptions(Options):
    # the time-varying confounders of care entry, measured before each trial's time zero
    # (columns of cohort.person_time); [] leaves only the baseline covariates, which is biased
    # when later records move entry to care (kept for the comparison)
    confounders: tuple[Literal["new_factors_recorded", "new_protection_plan"], ...] = (
        "new_factors_recorded",
        "new_protection_plan",
    )
    method: str = "trial_emulation"
    # 0: child-clustered sandwich standard errors (the entry model's estimation included);
    # above 0: children resampled that many times, the entry model refitted in each replicate
    bootstrap_replicates: int = 0
    # doubly robust: subtract a weighted linear outcome model of the controls before the
    # weighted contrast (standard errors as above: with 0 replicates the sandwich of the
    # stacked estimating equations, the outcome model's included)
    augment: bool = False
    # the trials' comparators: "never" (before year 11, censored at a later entry) or
    # "not_now" (each trial's intention to treat: not in the trial's year, usual care after)
    comparator: Literal["never", "not_now"] = "never"


@register
class SequentialTrials(AnalysisEstimator):
    """Sequential emulation of a target trial of care entry at each year since the first
    referral (:class:`models.gmethods.SequentialTrialEmulation`), pooled into the ATT of care
    before year 11 on each declared KS4 outcome (rows ``contrast``, method ``trial_emulation``);
    the per-trial numbers go to results/diagnostics.csv. Protocol: docs/gmethods.md."""

    name = "sequential_trials"
    Options = SequentialTrialsOptions
    options: SequentialTrialsOptions

    def _fit(self, cohort: CohortData) -> None:
        from models.gmethods import SequentialTrialEmulation, trial_periods

        s, o, a = self.settings, self.options, self.analysis
        outcomes = list(a.outcomes)
        kids = self.population(cohort)
        ed = kids[kids[outcomes].notna().all(axis=1)].reset_index(drop=True)
        treated = ed["ks4_care_group"].isin(["long", "short"]).to_numpy()
        if treated.sum() < 2 or (~treated).sum() < 2:
            self.diagnostics_.append(
                diagnostic(a.name, "skipped", float(treated.sum()), "too few entrants or controls")
            )
            return
        periods = trial_periods(ed, cohort.person_time, o.confounders)
        baseline = design_matrix(ed, s.covariates, s.categorical)
        ys = {out: ed[out].to_numpy(float) for out in outcomes}
        fitter = SequentialTrialEmulation(
            o.bootstrap_replicates, s.cv_seed, o.augment, comparator=o.comparator
        )
        results = fitter.fit(periods, baseline, o.confounders, ys)
        for out, r in results.items():
            binary = is_binary(ys[out])
            events: dict[str, Any] = (
                {
                    "events_exposed": int(np.nansum(ys[out][treated])),
                    "events_unexposed": int(np.nansum(ys[out][~treated])),
                }
                if binary
                else {}
            )
            lo, hi, p = _wald_interval(r.estimate, r.se)
            self.estimates_.append(
                Estimate(
                    out,
                    a.contrast,
                    o.method,
                    "risk_difference" if binary else "mean_difference",
                    r.estimate,
                    lo,
                    hi,
                    p,
                    r.n_treated,
                    r.n_control_children,
                    "; ".join(r.warnings),
                    **events,
                )
            )
            for t in r.trials[r.trials["entrants"] > 0].itertuples():
                self.diagnostics_.append(
                    diagnostic(f"{a.name}:{out}", f"trial_{t.trial}:entrants", float(t.entrants))
                )
                self.diagnostics_.append(
                    diagnostic(f"{a.name}:{out}", f"trial_{t.trial}:att", float(t.att))
                )
        w = fitter.control_weights_
        w = w[w > 0]
        self.diagnostics_ += [
            diagnostic(a.name, "control_weight_max", float(w.max()) if len(w) else np.nan),
            diagnostic(a.name, "control_weight_mean", float(w.mean()) if len(w) else np.nan),
            diagnostic(a.name, "person_periods", float(len(periods))),
        ]
        for term in o.confounders:
            self.diagnostics_.append(
                diagnostic(a.name, f"entry_log_hr:{term}", float(fitter.coef_.get(term, np.nan)))
            )


def _wald_interval(est: float, se: float) -> tuple[float, float, float]:
    """95% interval and two-sided p value; NaN without a usable standard error."""
    from scipy import stats

    if not np.isfinite(se) or se <= 0:
        return float("nan"), float("nan"), float("nan")
    return est - 1.96 * se, est + 1.96 * se, float(2 * stats.norm.sf(abs(est / se)))


class AbsenceMSMOptions(Options):
    # the time-varying confounders of care entry, as of each school year's 1 September
    # (columns of cohort.school_years); [] gives baseline-only weights
    confounders: tuple[Literal["new_factors_recorded", "new_protection_plan"], ...] = (
        "new_factors_recorded",
        "new_protection_plan",
    )
    # the last year since entry modelled on its own ("this many or more")
    max_years_since_entry: int = 4
    method: str = "msm_iptw"


@register
class AbsenceMSM(AnalysisEstimator):
    """Yearly absence by whole years since entry to care: a marginal structural model with
    stabilised time-varying weights (:func:`models.gmethods.absence_msm`); rows
    ``{contrast}_{j}`` for j = 0 to ``max_years_since_entry`` (the last: that many or more)."""

    name = "absence_msm"
    outcomes_in = "school_years"
    Options = AbsenceMSMOptions
    options: AbsenceMSMOptions

    def _fit(self, cohort: CohortData) -> None:
        from models.gmethods import absence_msm

        s, o, a = self.settings, self.options, self.analysis
        if cohort.school_years.empty:
            return
        kids = self.population(cohort)
        covs = [c for c in s.covariates if c in kids.columns]
        for outcome in a.outcomes:
            r = absence_msm(
                cohort.school_years,
                kids,
                covs,
                s.categorical,
                o.confounders,
                outcome,
                o.max_years_since_entry,
            )
            for row in r.rows.itertuples():
                lo, hi, p = _wald_interval(row.estimate, row.se)
                self.estimates_.append(
                    Estimate(
                        outcome,
                        f"{a.contrast}_{row.years_since_entry}",
                        o.method,
                        "mean_difference",
                        row.estimate,
                        lo,
                        hi,
                        p,
                        row.n_children,
                        r.n_children - row.n_children,
                        "; ".join(r.warnings),
                    )
                )
            self.diagnostics_ += [
                diagnostic(f"{a.name}:{outcome}", "weight_max", float(r.weights.max())),
                diagnostic(f"{a.name}:{outcome}", "weight_mean", float(r.weights.mean())),
            ]


# ---- effect modification by pre-care adversity (issue #20) -----------------------------------


class StratifiedEffectOptions(Options):
    exposure: str = "ks4_care_group"
    exposed: tuple[str, ...] = ("long", "short")
    unexposed: tuple[str, ...] = ("none",)
    # 0/1 columns of cohort.children: the ATT is estimated among children with and without each
    modifiers: tuple[str, ...] = tuple(ADVERSITIES)
    # also strata of deprivation: deciles 1 to this (most deprived) vs the rest; None: no
    most_deprived_up_to_decile: int | None = Field(3, ge=1, le=9)
    # the nuisance models: the pipeline's parametric propensity (settings) and outcome models,
    # or cross-fitted gradient boosting (models.effects.cross_fitted_nuisances)
    nuisance: Nuisance = "parametric"
    # a stratum with fewer exposed or unexposed children than this is not estimated
    min_children: int = Field(10, ge=2)
    # bootstrap standard errors (parametric nuisances) when the settings ask for replicates;
    # False: the influence function's, with the nuisance models treated as fixed
    bootstrap: bool = True


@register
class StratifiedEffect(ExposureEffect):
    """Doubly robust ATT within each stratum of a modifier and the difference between strata
    (:func:`models.heterogeneity.stratum_atts`, influence-function SEs). Rows: contrast
    ``{contrast}_with_{m}``, ``{contrast}_without_{m}`` and ``{contrast}_with_minus_without_{m}``
    (scale ``difference_in_<scale>``), the deprivation strata as ``{contrast}_most_deprived``,
    ``{contrast}_less_deprived`` and ``{contrast}_most_deprived_minus_less_deprived``; method
    ``aipw`` or, with boosting nuisances, ``aipw_boosting`` (which adds the overall ATT under
    ``{contrast}``, to compare with the parametric AIPW). A difference row carries the smaller
    stratum's counts, so disclosure control withholds it whenever it withholds a stratum.

    Standard errors: with parametric nuisances and ``model.bootstrap_replicates`` above 0, the
    SD of the bootstrap replicates (:func:`models.effects.bootstrap_stratum_draws`: weights
    and outcome models refitted in each), as the overall ATT's; otherwise the influence
    function's. A stratum whose unexposed children have a Kish effective size under
    ``MIN_STRATUM_ESS`` gets a warning on its rows and the difference's."""

    name = "stratified_effect"
    Options = StratifiedEffectOptions  # type: ignore[assignment]
    options: StratifiedEffectOptions  # type: ignore[assignment]

    def _fit(self, cohort: CohortData) -> None:
        from models.heterogeneity import stratum_atts

        s, o, a = self.settings, self.options, self.analysis
        outcomes = list(a.outcomes)
        kids = self.population(cohort)
        ed = kids[kids[outcomes].notna().all(axis=1)].reset_index(drop=True)
        sub = ed[ed[o.exposure].isin([*o.exposed, *o.unexposed])].reset_index(drop=True)
        t = sub[o.exposure].isin(o.exposed).to_numpy().astype(int)
        if t.sum() < o.min_children or (1 - t).sum() < o.min_children:
            self.diagnostics_.append(
                diagnostic(a.name, "skipped", float(t.sum()), "too few exposed or unexposed")
            )
            return
        strata: dict[str, tuple[np.ndarray, tuple[str, str]]] = {}
        for m in o.modifiers:
            if m not in sub:
                raise ConfigError(f"analysis {a.name!r}: modifier {m!r} not in cohort.children")
            strata[m] = (sub[m].to_numpy() == 1, ("with", "without"))
        if o.most_deprived_up_to_decile is not None:
            most = sub["deprivation_decile"].to_numpy() <= o.most_deprived_up_to_decile
            strata["deprivation"] = (most, ("most_deprived", "less_deprived"))
        method = "aipw" if o.nuisance == "parametric" else "aipw_boosting"
        x = design_matrix(sub, s.covariates, s.categorical)
        if o.nuisance == "parametric":
            ps, designs, ps_design = fit_propensity(sub, t, s, None, a.name)
            w = ps.weights_
            design_of = self._outcome_designs(cohort, ed, outcomes)
        boot: dict[tuple[str, str], np.ndarray] = {}
        if o.nuisance == "parametric" and o.bootstrap and s.bootstrap_replicates > 0:
            boot = bootstrap_stratum_draws(
                t,
                ps.bootstrap_refitter(designs[ps_design], t),
                {
                    out: (
                        sub[out].to_numpy(float),
                        designs[design_of[out]],
                        is_binary(sub[out].to_numpy(float)),
                    )
                    for out in outcomes
                },
                {m: in_s for m, (in_s, _labels) in strata.items()},
                s.bootstrap_replicates,
                s.cv_seed,
            )
        for out in outcomes:
            y = sub[out].to_numpy(float)
            binary = is_binary(y)
            scale = "risk_difference" if binary else "mean_difference"
            f = ExposureEffectFitter("aipw", binary=binary, nuisance=o.nuisance, seed=s.cv_seed)
            if o.nuisance == "parametric":
                m0 = f.untreated_predictions(y, t, designs[design_of[out]])
                # the nuisance models' warnings (a ridge-penalised outcome model, a propensity
                # fallen back to maximum likelihood) belong on every stratum's row, as on the
                # overall AIPW row that uses the same models
                warning = "; ".join([*f.warnings_, *ps.warnings_])
            else:
                # the overall ATT with the same cross-fitted nuisances as the strata
                f.fit(y, t, x)
                m0, w = f.nuisances_.untreated, f.nuisances_.att_weights(t)
                est = f.result(out, a.contrast, scale)
                est.method = method
                self.estimates_.append(est)
                warning = est.warning
            for m, (in_s, labels) in strata.items():
                rows = stratum_atts(y, t, m0, w, in_s, labels, o.min_children)
                if not rows:
                    self.diagnostics_.append(
                        diagnostic(a.name, f"skipped:{out}:{m}", float(in_s.sum()), "small stratum")
                    )
                    continue
                kept = [False] * len(rows)
                if (out, m) in boot:
                    rows, kept = with_bootstrap_se(rows, boot[(out, m)], s.bootstrap_replicates)
                thin = [
                    effective_sample_size(w[(t == 0) & sel]) < MIN_STRATUM_ESS
                    for sel in (in_s, ~in_s)
                ]
                notes = [
                    "; ".join(
                        filter(None, [THIN_STRATUM if few else "", FEW_REPLICATES if k else ""])
                    )
                    for few, k in zip([*thin, any(thin)], kept, strict=True)
                ]
                for r, sel, note in zip(rows, (in_s, ~in_s, None), notes, strict=True):
                    what = m if m != "deprivation" else ""
                    label = f"{r.label}_{what}".rstrip("_")
                    lo, hi = r.ci
                    if sel is None:  # the difference: the smaller stratum's counts
                        n1 = min(rows[0].n_exposed, rows[1].n_exposed)
                        n0 = min(rows[0].n_unexposed, rows[1].n_unexposed)
                        ev = (
                            [
                                min(int(y[(t == g) & in_s].sum()), int(y[(t == g) & ~in_s].sum()))
                                for g in (1, 0)
                            ]
                            if binary
                            else [None, None]
                        )
                        row_scale = f"difference_in_{scale}"
                    else:
                        n1, n0 = r.n_exposed, r.n_unexposed
                        ev = (
                            [int(y[(t == g) & sel].sum()) for g in (1, 0)]
                            if binary
                            else [None, None]
                        )
                        row_scale = scale
                    self.estimates_.append(
                        Estimate(
                            out,
                            f"{a.contrast}_{label}",
                            method,
                            row_scale,
                            r.estimate,
                            lo,
                            hi,
                            r.p_value,
                            n1,
                            n0,
                            events_exposed=ev[0],
                            events_unexposed=ev[1],
                            warning="; ".join(filter(None, [warning, note])),
                        )
                    )


# below this Kish effective size of a stratum's weighted unexposed children its interval is
# flagged: the recorded-physical-abuse stratum of a 20,000-child world, below it in 39 of 40
# worlds, spreads 1.09-1.13 times its bootstrap SE over 100 worlds (docs/gmethods.md)
MIN_STRATUM_ESS = 20.0
THIN_STRATUM = (
    "fewer than 20 effective comparison children (Kish) in the stratum: interval unreliable"
)
FEW_REPLICATES = "too few usable bootstrap replicates: influence-function standard error kept"


def with_bootstrap_se(
    rows: list[Any], draws: np.ndarray, replicates: int
) -> tuple[list[Any], list[bool]]:
    """The stratum rows (in, out, in - out) with their bootstrap SEs, the SD of the usable
    replicates, and per row whether the influence function's SE was kept instead (fewer than
    20 or half the replicates usable: :func:`models.effects.bootstrap_sd`)."""
    out, kept = [], []
    for r, column in zip(rows, draws.T, strict=True):
        se = bootstrap_sd(column[np.isfinite(column)], replicates)
        out.append(replace(r, se=se) if np.isfinite(se) else r)
        kept.append(not np.isfinite(se))
    return out, kept


class DRLearnerOptions(Options):
    exposure: str = "ks4_care_group"
    exposed: tuple[str, ...] = ("long", "short")
    unexposed: tuple[str, ...] = ("none",)
    # the summaries: recorded adversities (these 0/1 columns, counted and capped at 3) and
    # deprivation bands (deciles 1-3, 4-7, 8-10)
    count_of: tuple[str, ...] = (*ADVERSITIES, "parental_learning_disability")
    folds: int = Field(5, ge=2, le=10)
    # bounds on the cost at national size: boosting rounds per nuisance model, children used
    max_iter: int = Field(100, ge=10, le=1000)
    max_rows: int = Field(20_000, ge=1000)


@register
class DRLearnerEffect(AnalysisEstimator):
    """The conditional effect of care summarised by recorded adversity count and deprivation
    (:class:`models.heterogeneity.DRLearner`, Kennedy 2023): rows ``{contrast}_cate_adversities_k``
    (k = 0, 1, 2, 3 or more) and ``{contrast}_cate_deprivation_{band}``, method ``dr_learner``:
    mean pseudo-outcome of *all* children of the group (an average effect, not the ATT).
    Diagnostics: the best-linear-predictor calibration (``blp_b2`` near 1: the predicted
    differences are real and of the right size; ``blp_b2_p``: test of no heterogeneity)."""

    name = "dr_learner"
    Options = DRLearnerOptions
    options: DRLearnerOptions

    def _fit(self, cohort: CohortData) -> None:
        from models.heterogeneity import DRLearner

        s, o, a = self.settings, self.options, self.analysis
        kids = self.population(cohort)
        for out in a.outcomes:
            ed = kids[kids[out].notna()]
            sub = ed[ed[o.exposure].isin([*o.exposed, *o.unexposed])].reset_index(drop=True)
            t = sub[o.exposure].isin(o.exposed).to_numpy().astype(int)
            if t.sum() < 20 or (1 - t).sum() < 20:
                self.diagnostics_.append(diagnostic(a.name, f"skipped:{out}", float(t.sum())))
                continue
            y = sub[out].to_numpy(float)
            binary = is_binary(y)
            x = design_matrix(sub, s.covariates, s.categorical)
            decile = sub["deprivation_decile"].to_numpy()
            v = pd.DataFrame(
                {
                    "adversities": sub[list(o.count_of)].sum(axis=1).clip(upper=3).astype(int),
                    "deprivation": np.where(
                        decile <= 3, "1_3", np.where(decile <= 7, "4_7", "8_10")
                    ),
                }
            )
            learner = DRLearner(
                folds=o.folds, max_iter=o.max_iter, max_rows=o.max_rows, seed=s.cv_seed
            ).fit(x, y, t, v, binary)
            scale = "risk_difference" if binary else "mean_difference"
            for col in ("adversities", "deprivation"):
                for r in learner.by_group(col).itertuples():
                    lo, hi = r.estimate - 1.959964 * r.se, r.estimate + 1.959964 * r.se
                    self.estimates_.append(
                        Estimate(
                            out,
                            f"{a.contrast}_cate_{col}_{r.level}",
                            "dr_learner",
                            scale,
                            float(r.estimate),
                            float(lo),
                            float(hi),
                            float("nan"),
                            int(((v[col] == r.level).to_numpy() & (t == 1)).sum()),
                            int(((v[col] == r.level).to_numpy() & (t == 0)).sum()),
                        )
                    )
            for item, value in learner.calibration().items():
                self.diagnostics_.append(diagnostic(f"{a.name}:{out}", f"blp_{item}", value))


# ---- the hazard ratio by years since entry (issue #20 item 2; H8) ---------------------------


class HazardBySinceEntryOptions(Options):
    # the last whole year since first entry with its own hazard ratio ("this many or more")
    max_years_since_entry: int = 4
    method: str = "cox_tv_by_years_since_entry"


@register
class HazardByYearsSinceEntry(AnalysisEstimator):
    """Hazard of each outcome while looked after, by whole years since first entry: the
    time-varying Cox model of ``time_varying_survival`` (same covariates, authority strata,
    age-month clock) with care split into one term per year since entry
    (:func:`models.gmethods.split_at_entry_anniversaries`); rows ``{contrast}_year_since_entry_{j}``
    (the world's truth names)."""

    name = "hazard_by_years_since_entry"
    shares = "survival_time"
    outcomes_in = "person_time"
    Options = HazardBySinceEntryOptions
    options: HazardBySinceEntryOptions

    def _fit(self, cohort: CohortData) -> None:
        from models.gmethods import split_at_entry_anniversaries

        s, o, a, pt = self.settings, self.options, self.analysis, cohort.person_time
        kids = self.population(cohort).reset_index(drop=True)
        strata = [c for c in s.categorical if c in s.survival_covariates]
        x = design_matrix(kids, s.survival_covariates, strata)
        cox_covs = [c for c in s.survival_covariates if c not in strata]
        kids_x = pd.concat([kids[["person_key", *strata]], x], axis=1)
        terms = [f"looked_after_{j}" for j in range(o.max_years_since_entry + 1)]
        outcomes = a.outcomes
        if outcomes == EVERY_TIME_TO_EVENT_OUTCOME:
            outcomes = tuple(sorted(pt["outcome"].unique()))
        for outcome in outcomes:
            mine = cohort.survival_time(outcome, a.population)
            split = split_at_entry_anniversaries(mine, kids, o.max_years_since_entry)
            rows = age_month_intervals(split, kids)
            rows = rows.drop(columns=["age_at_index"]).merge(kids_x, on="person_key")
            try:
                f = TimeVaryingCoxFitter(robust=s.cox_standard_errors == "robust").fit(
                    rows, [*terms[1:], *cox_covs], exposure=terms[0], strata=strata
                )
                # the fitter's "no events while (not) looked after" reads its first term only:
                # each year's own count is checked below
                kept = [w for w in f.warnings_ if not w.startswith("no events while")]
                summary, warning = f.summary, "; ".join(kept)
            except Exception as exc:
                summary, warning = None, f"failed: {type(exc).__name__}: {exc}"
            for j, term in enumerate(terms):
                on = rows[term] == 1
                hr = lo = hi = p = float("nan")
                if summary is not None and term in summary.index:
                    r = summary.loc[term]
                    hr, lo, hi = (
                        float(np.exp(r[c])) for c in ("coef", "coef lower 95%", "coef upper 95%")
                    )
                    p = float(r["p"])
                n_exp = int(rows.loc[on, "person_key"].nunique())
                events_on = int(rows.loc[on, "event"].sum())
                note = warning
                if events_on == 0:  # the term's coefficient runs off to minus infinity
                    hr = lo = hi = p = float("nan")
                    note = "; ".join(filter(None, [warning, "no events in this year since entry"]))
                elif not (np.isfinite(lo) and np.isfinite(hi) and lo > 0):
                    # its events compare with no one (e.g. alone in their local-authority
                    # stratum): the fit stops anywhere, seen as an unbounded interval
                    note = "; ".join(
                        filter(None, [warning, "not identified: the interval is unbounded"])
                    )
                self.estimates_.append(
                    Estimate(
                        outcome,
                        f"{a.contrast}_year_since_entry_{j}",
                        o.method,
                        "hazard_ratio",
                        hr,
                        lo,
                        hi,
                        p,
                        n_exp,
                        int(rows["person_key"].nunique()) - n_exp,
                        note,
                        events_exposed=events_on,
                        events_unexposed=int(rows.loc[rows["looked_after"] == 0, "event"].sum()),
                    )
                )


# ---- the IPW marginal structural model of the time-to-event outcomes (issue #20 item 3) -----


class HazardMSMOptions(Options):
    # the time-varying confounders of care entry, as of each year since the index date
    # (columns of cohort.person_time); [] gives baseline-only weights
    confounders: tuple[Literal["new_factors_recorded", "new_protection_plan"], ...] = (
        "new_factors_recorded",
        "new_protection_plan",
    )
    # the rows' weights truncated at this percentile and 100 minus it; None: not truncated
    truncate_percentile: float | None = Field(99.9, ge=50, lt=100)
    method: str = "msm_iptw_hazard"
    # 0: child-clustered sandwich standard errors (the weights treated as known); above 0:
    # children resampled that many times, the weights re-estimated and every outcome refitted
    # in each replicate (models.gmethods.hazard_msm_bootstrap), the SE their SD. Costs that many
    # times the analysis; for a rare outcome's intervals (docs/gmethods.md section 3b)
    bootstrap_replicates: int = Field(0, ge=0)


@register
class HazardMSM(AnalysisEstimator):
    """Hazard of each outcome with care as a time-varying treatment, adjusted for the
    time-varying confounders of care entry by stabilised inverse-probability weights (a
    marginal structural model, :func:`models.gmethods.hazard_msm`): rows ``contrast`` (the
    hazard ratio of being looked after against never having entered care), method
    ``msm_iptw_hazard``, with the counts of ``time_varying_survival`` (the same children and
    events). The weights are modelled once and shared by the outcomes; diagnostics: the
    children's whole-history weights' mean and range (before truncation), and per outcome the
    truncation bounds and the Kish effective sample size of its person-time rows' weights (a
    warning under half the rows). Protocol:
    docs/gmethods.md section 3b."""

    name = "hazard_msm"
    outcomes_in = "person_time"
    Options = HazardMSMOptions
    options: HazardMSMOptions

    def _fit(self, cohort: CohortData) -> None:
        from models.gmethods import (
            bootstrap_log_hr_se,
            entry_weights,
            hazard_msm,
            hazard_msm_bootstrap,
        )

        s, o, a, pt = self.settings, self.options, self.analysis, cohort.person_time
        kids = self.population(cohort).reset_index(drop=True)
        if pt.empty or kids.empty:
            return
        x = design_matrix(kids, s.survival_covariates, s.categorical)
        weights = entry_weights(kids, pt, x, o.confounders)
        # each child's weight for its whole treatment history, before truncation
        final = weights.final
        self.diagnostics_ += [
            diagnostic(a.name, "weight_mean", float(final.mean())),
            diagnostic(a.name, "weight_min", float(final.min())),
            diagnostic(a.name, "weight_max", float(final.max())),
        ]
        outcomes = a.outcomes
        if outcomes == EVERY_TIME_TO_EVENT_OUTCOME:
            outcomes = tuple(sorted(pt["outcome"].unique()))
        replicates = (
            hazard_msm_bootstrap(
                pt,
                kids,
                x,
                o.confounders,
                outcomes,
                o.bootstrap_replicates,
                s.cv_seed,
                o.truncate_percentile,
            )
            if o.bootstrap_replicates > 0
            else {}
        )
        for outcome in outcomes:
            nan, warning = float("nan"), ""
            try:
                r = hazard_msm(
                    pt, kids, x, o.confounders, outcome, o.truncate_percentile, weights=weights
                )
            except Exception as exc:  # one outcome's failed fit is a row, not a failed stage
                self.estimates_.append(
                    Estimate(
                        outcome,
                        a.contrast,
                        o.method,
                        "hazard_ratio",
                        nan,
                        nan,
                        nan,
                        nan,
                        0,
                        0,
                        f"failed: {type(exc).__name__}: {exc}",
                    )
                )
                continue
            hr, (lo, hi), se = r.hazard_ratio, r.ci, r.log_hr_se
            if outcome in replicates:
                se, usable = bootstrap_log_hr_se(replicates[outcome])
                lo, hi = (
                    float(np.exp(np.log(hr) - 1.96 * se)),
                    float(np.exp(np.log(hr) + 1.96 * se)),
                )
                self.diagnostics_.append(
                    diagnostic(
                        f"{a.name}:{outcome}",
                        "bootstrap_replicates_usable",
                        float(usable),
                        ""
                        if usable >= 0.9 * o.bootstrap_replicates
                        else f"only {usable} of {o.bootstrap_replicates} bootstrap replicates "
                        "had events while looked after and while not: the SE is unreliable",
                    )
                )
            if r.events_exposed == 0 or r.events_unexposed == 0:
                hr = lo = hi = se = nan
                r.warnings.append("no events while looked after or while not")
            _, _, p = _wald_interval(float(np.log(hr)) if np.isfinite(hr) else nan, se)
            epv = events_per_covariate_warning(
                r.events_exposed + r.events_unexposed, 1 + x.shape[1]
            )
            warning = "; ".join(filter(None, [*r.warnings, epv]))
            self.estimates_.append(
                Estimate(
                    outcome,
                    a.contrast,
                    o.method,
                    "hazard_ratio",
                    hr,
                    lo,
                    hi,
                    p,
                    r.n_exposed,
                    r.n_unexposed,
                    warning,
                    events_exposed=r.events_exposed,
                    events_unexposed=r.events_unexposed,
                )
            )
            low, high = r.truncated_at
            w = r.weights  # the outcome's person-time rows' weights, truncated
            ess = float(w.sum() ** 2 / np.sum(w**2)) if len(w) else nan
            few = (
                f"the weights' effective sample size is {ess:.0f} of {len(w)} person-time rows"
                if ess < 0.5 * len(w)
                else ""
            )
            where = f"{a.name}:{outcome}"
            self.diagnostics_ += [
                diagnostic(where, "weight_truncated_below", low),
                diagnostic(where, "weight_truncated_above", high),
                diagnostic(where, "person_time_rows", float(len(w))),
                diagnostic(where, "effective_sample_size", ess, few),
                diagnostic(where, "cells", float(r.cells)),
            ]
