"""Readable names for the column, outcome, contrast and method names the report shows.

A name with no entry here is shown humanised (``prior_ks2_expected`` -> "Prior ks2 expected"),
so a new analysis or covariate appears readable enough without a report change; add an entry
when a published label matters.
"""

from __future__ import annotations

import re

LABELS: dict[str, str] = {
    # groups
    "CLA": "Looked after (CLA)",
    "NLA": "Children in need, not looked after (NLA)",
    # baseline characteristics (cohort.children, Table 1, balance)
    "children": "Children",
    "physical_abuse": "Physical abuse",
    "parental_mental_ill_health": "Parental mental ill health",
    "parental_substance_misuse": "Parental alcohol or substance misuse",
    "domestic_abuse": "Domestic abuse",
    "parental_learning_disability": "Parental learning disability",
    "disability": "Child disability",
    "female": "Female",
    "sex_M": "Male",
    "sex_male": "Male",
    "deprivation_quintile_1": "Deprivation quintile 1 (most deprived)",
    "deprivation_quintile_2": "Deprivation quintile 2",
    "deprivation_quintile_3": "Deprivation quintile 3",
    "deprivation_quintile_4": "Deprivation quintile 4",
    "deprivation_quintile_5": "Deprivation quintile 5 (least deprived)",
    "deprivation_quintile_missing": "Deprivation not recorded",
    "deprivation_decile": "Deprivation decile (1 = most deprived)",
    "age_at_index": "Age at first social-services contact (years)",
    "birth_cohort": "Birth year",
    "prior_ks2_expected": "Reached expected standard at KS2",
    "prior_ks2_missing": "KS2 result not recorded",
    "prior_emergency_admissions": "Emergency admissions before the index date",
    "n_recorded_adversities": "Number of recorded adversities",
    # outcomes
    "ks4_score": "KS4 attainment score",
    "ks4_level2_inclusive": "KS4 level 2 incl. English and maths",
    "absence_rate": "School absence rate",
    "persistent_absence": "Persistent absence",
    "emergency_admission": "Emergency hospital admission",
    "mental_health_admission": "Mental health admission",
    "self_harm": "Self-harm admission",
    "appendicitis": "Appendicitis (negative control)",
    "dental_caries": "Dental caries (negative control)",
    # contrasts
    "cla_vs_nla": "Looked after before year 11 vs NLA",
    "enter_now_vs_not_now": "Entered care this year vs not this year (per trial, pooled)",
    "long_vs_nla": "Long care vs NLA",
    "short_vs_nla": "Short care vs NLA",
    "looked_after_year": "Looked-after years vs other years",
    "per_placement_move": "Per placement move",
    "per_year_age_at_entry": "Per year of age at care entry",
    # linkage model charts (results/figures/linkage_<name>.png)
    "m_u_parameters": "m and u probabilities of each comparison level",
    "match_weights": "Match weight of each comparison level",
    # methods
    "unadjusted": "Unadjusted",
    "regression": "Regression adjustment",
    "ipw": "IPW (ATT weights)",
    "aipw": "AIPW (doubly robust)",
    "gee": "GEE",
    "cox_tv": "Cox, time-varying care",
    "cox_tv_unadjusted": "Cox, unadjusted",
    "poisson_pw": "Piecewise Poisson",
    "trial_emulation": "Sequential trials (time-varying confounders)",
    "trial_emulation_itt": "Sequential trials, enter now vs not now (intention to treat)",
    "trial_emulation_itt_dr": "Sequential trials, enter now vs not now (intention to treat, "
    "doubly robust)",
    "msm_iptw": "Marginal structural model (stabilised weights)",
    "msm_iptw_hazard": "Marginal structural model, hazards (time-varying confounders)",
    "cox_tv_by_years_since_entry": "Cox, by years since entry",
    "aipw_boosting": "AIPW, gradient-boosting nuisances",
    "dr_learner": "DR-learner (conditional effect)",
    # time-varying confounders
    "new_factors_recorded": "Adversity factors newly recorded at a later assessment",
    "new_protection_plan": "A child-protection plan begun after the referral",
    # scales
    "mean_difference": "Mean difference",
    "risk_difference": "Risk difference",
    "odds_ratio": "Odds ratio",
    "hazard_ratio": "Hazard ratio",
}

# scales drawn on a log axis with the null at 1
RATIO_SCALES = frozenset({"hazard_ratio", "odds_ratio", "rate_ratio", "risk_ratio"})


# effect-modification contrasts: <adversity>_x_cla (interaction), _in_cla / _in_nla (within)
MODIFIER_SUFFIXES = {
    "_x_cla": " × looked after (interaction)",
    "_in_cla": ": effect within CLA",
    "_in_nla": ": effect within NLA",
}


def cell_label(name: str) -> str:
    """A table cell's label: the entry of ``name`` (or of an effect-modification contrast),
    else ``name`` itself (a new analysis's contrast or method stays findable by the name its
    declaration gives it)."""
    for suffix, text in MODIFIER_SUFFIXES.items():
        if name.endswith(suffix) and name.removesuffix(suffix) in LABELS:
            return LABELS[name.removesuffix(suffix)] + text
    return LABELS.get(name, name)


def label(name: str) -> str:
    """The readable label of ``name`` (a humanised name when there is no entry)."""
    if name in LABELS:
        return LABELS[name]
    for suffix, text in (("_high_quality_links", ", high-quality links only"),):
        if name.endswith(suffix) and name[: -len(suffix)] in LABELS:
            return LABELS[name[: -len(suffix)]] + text
    spline = re.fullmatch(r"(.+)_rcs(\d+)", name)
    if spline:
        return f"{label(spline.group(1))}: spline term {spline.group(2)}"
    if "_x_" in name:
        return " × ".join(label(part) for part in name.split("_x_", 1))
    if name.startswith("la_code_"):
        return "Local authority " + name.removeprefix("la_code_")
    if name.startswith("age_band_at_index_"):
        return "Age " + name.removeprefix("age_band_at_index_") + " at index"
    text = name.replace("_x_", " × ").replace("_", " ").strip()
    return text[:1].upper() + text[1:]
