"""What the report computes from the cohort tables (analysis zone, pseudonymous) itself, each
result under disclosure control before it is returned.

The model stage releases counts, estimates and the Kaplan-Meier table of the declared KM
outcomes; the report also needs, per the STROBE items: means (SD) of continuous baseline
characteristics, standardised differences before and after weighting for every Table 1 row,
Kaplan-Meier curves for every time-to-event outcome and the propensity overlap of each
population an effect was estimated in. They are computed here with the models' own functions
(:func:`models.estimators.fit_propensity`, :func:`models.outputs.km_yearly_table`,
:func:`models.propensity.smd`) so they are the same quantities as the models'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ground.run_layout import RunLayout
from models.disclosure import DisclosureSettings, round_to
from models.estimators import CohortData, fit_propensity
from models.outputs import km_yearly_table
from models.propensity import smd
from models.run import load_cohort
from models.settings import ModelSettings
from schemas.analyses import Analysis

# continuous baseline characteristics shown as mean (SD) in Table 1
CONTINUOUS = ("age_at_index", "deprivation_decile", "prior_emergency_admissions")
# characteristics of the whole-cohort propensity model the Table 1 "after weighting" column uses
AUC_TOLERANCE = 1e-6


@dataclass
class Cohort:
    children: pd.DataFrame
    person_time: pd.DataFrame
    school_years: pd.DataFrame
    settings: ModelSettings


def load(layout: RunLayout, settings: ModelSettings) -> Cohort:
    children, pt, sy = load_cohort(layout)
    return Cohort(children, pt, sy, settings)


def time_to_event_outcomes(cohort: Cohort, declared_first: Sequence[str]) -> list[str]:
    """Every outcome of cohort.person_time, the declared Kaplan-Meier ones first."""
    present = sorted(cohort.person_time["outcome"].unique())
    return [o for o in declared_first if o in present] + [
        o for o in present if o not in declared_first
    ]


def km_every_outcome(
    cohort: Cohort, outcomes: Sequence[str], s: DisclosureSettings
) -> pd.DataFrame:
    """Coarsened Kaplan-Meier table (the release's rule, :func:`models.disclosure.km_yearly`)
    for ``outcomes``: columns outcome, group, year, at_risk, cumulative_incidence_pct."""
    return km_yearly_table(cohort.children, cohort.person_time, outcomes, s)


def characteristic(children: pd.DataFrame, name: str) -> np.ndarray | None:
    """The 0/1 or numeric column behind a Table 1 row name (as models.outputs.table_one names
    them), None for a row that is not a characteristic."""
    if name in children:
        return children[name].to_numpy(float)
    if name == "female":
        return (children["sex"] == "F").to_numpy(float)
    if name.startswith("deprivation_quintile_"):
        q = name.removeprefix("deprivation_quintile_")
        if q == "missing":
            return children["deprivation_quintile"].isna().to_numpy(float)
        return (children["deprivation_quintile"] == int(q)).to_numpy(float)
    return None


def whole_cohort_weights(cohort: Cohort) -> tuple[np.ndarray | None, list[str]]:
    """ATT weights of being ever looked after in the whole cohort (the model stage's Table 1
    and weighted-KM weights: the same call as :func:`models.run.run_models`) and the fit's
    warnings (exact balance infeasible, covariates still imbalanced: no counts in them)."""
    t = (cohort.children["group"] == "CLA").to_numpy().astype(int)
    if not 0 < t.sum() < len(t):
        return None, []
    ps, _, _ = fit_propensity(cohort.children, t, cohort.settings, None, "propensity:table1")
    return np.asarray(ps.weights_, float), list(ps.warnings_)


def standardised_differences(
    cohort: Cohort, names: Sequence[str], weights: np.ndarray | None
) -> pd.DataFrame:
    """SMD (CLA - NLA, pooled SD) of each Table 1 characteristic before and after weighting;
    missing values of a continuous characteristic are left out of its SMD."""
    t = (cohort.children["group"] == "CLA").to_numpy().astype(int)
    rows = []
    for name in names:
        x = characteristic(cohort.children, name)
        if x is None:
            continue
        ok = ~np.isnan(x)
        w = None if weights is None else weights[ok]
        rows.append(
            {
                "characteristic": name,
                "smd_before": smd(x[ok], t[ok]),
                "smd_after": smd(x[ok], t[ok], w) if w is not None else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["characteristic", "smd_before", "smd_after"])


def continuous_summary(cohort: Cohort, s: DisclosureSettings) -> pd.DataFrame:
    """Mean (SD) of each continuous characteristic by group; a group with fewer than
    ``threshold`` children with a value shows nothing."""
    kids = cohort.children
    rows = []
    for name in CONTINUOUS:
        if name not in kids:
            continue
        row: dict[str, object] = {"characteristic": name}
        for g in ("CLA", "NLA"):
            v = kids.loc[kids["group"] == g, name].dropna().astype(float)
            row[g] = f"{v.mean():.1f} ({v.std():.1f})" if len(v) >= s.threshold else "[c]"
        rows.append(row)
    return pd.DataFrame(rows, columns=["characteristic", "CLA", "NLA"])


@dataclass(frozen=True)
class Overlap:
    """The preference-score distribution of one analysed population, in released bins."""

    analysis: str
    contrast: str
    auc: float
    equipoise: float
    edges: np.ndarray
    shares: dict[str, np.ndarray]  # per group (exposed/unexposed label), NaN = suppressed


def analysed_overlaps(
    cohort: Cohort, analyses: Sequence[Analysis], diagnostics: pd.DataFrame, s: DisclosureSettings
) -> tuple[list[Overlap], list[str]]:
    """For each ``exposure_effect`` analysis in the whole cohort: its propensity model refitted
    on the population its estimates come from (children with every outcome measured, in the
    exposed or unexposed levels: :class:`models.estimators.ExposureEffect`), binned in tenths
    of the preference score under disclosure control. A refit whose AUC differs from the one in
    results/diagnostics.csv is not drawn (the population rule has drifted): its note says so."""
    out: list[Overlap] = []
    notes: list[str] = []
    data = CohortData(cohort.children, cohort.person_time, cohort.school_years)
    for a in analyses:
        if a.estimator != "exposure_effect" or a.population != "all" or isinstance(a.outcomes, str):
            continue
        opts = a.options
        exposure = str(opts.get("exposure", "ks4_care_group"))
        exposed = list(opts.get("exposed", ()))
        unexposed = list(opts.get("unexposed", ("none",)))
        kids = data.population("all")
        assert kids is not None
        ed = kids[kids[list(a.outcomes)].notna().all(axis=1)].reset_index(drop=True)
        sub = ed[ed[exposure].isin([*exposed, *unexposed])].reset_index(drop=True)
        t = sub[exposure].isin(exposed).to_numpy().astype(int)
        if t.sum() < 2 or (1 - t).sum() < 2:
            continue
        ps, _, _ = fit_propensity(sub, t, cohort.settings, None, f"propensity:{a.contrast}")
        key = diagnostics[
            (diagnostics["analysis"] == f"propensity:{a.contrast}") & (diagnostics["item"] == "auc")
        ]["value"]
        if len(key) != 1 or abs(float(key.iloc[0]) - ps.auc_) > AUC_TOLERANCE:
            notes.append(
                f"{a.name}: the refitted propensity model's AUC ({ps.auc_:.3f}) differs from "
                "results/diagnostics.csv: overlap not drawn"
            )
            continue
        edges = np.linspace(0, 1, 11)
        shares = {}
        for g, sel in (("exposed", t == 1), ("unexposed", t == 0)):
            counts, _ = np.histogram(ps.preference_[sel], bins=edges)
            shown = np.where(counts < s.threshold, np.nan, round_to(counts, s.rounding))
            total = float(round_to(sel.sum(), s.rounding))
            shares[g] = np.where(counts == 0, 0.0, shown / total)
        out.append(Overlap(a.name, a.contrast, ps.auc_, ps.equipoise_, edges, shares))
    return out, notes
