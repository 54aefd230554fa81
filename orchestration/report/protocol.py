"""The emulated trials' protocols, as data: each element of a target-trial protocol
(eligibility, treatment strategies, assignment, time zero, follow-up, outcome, causal contrast
or estimand, analysis) for each g-method estimator, in the words of docs/gmethods.md. The
report renders them as tables (:func:`protocol_rows`), filling in what the study config
declares (the time-varying confounders, the last year since entry modelled on its own), so a
changed declaration changes the page.

When an estimator's protocol changes, change it here and in docs/gmethods.md (the same words).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.report.labels import label
from schemas.analyses import Analysis


@dataclass(frozen=True)
class TrialProtocol:
    """One emulated trial's protocol: ``elements`` are (element, text) in protocol order; a
    text may name ``{confounders}`` and ``{last_year}``, filled from the analysis's options."""

    estimator: str  # the registered estimator (models/estimators.py) it describes
    title: str
    elements: tuple[tuple[str, str], ...]


SEQUENTIAL_TRIALS = TrialProtocol(
    "sequential_trials",
    "Sequential emulation of a trial of care entry (KS4), one trial per year since the "
    "first referral",
    (
        (
            "Eligibility",
            "Children in need of the cohort with a KS4 result whose KS4 year starts after the "
            "first referral, not looked after since the referral by the start of year k, and "
            "year 11 not yet begun; re-assessed every year.",
        ),
        (
            "Treatment strategies",
            "Enter care during year k (whatever care follows) versus never enter care before "
            "year 11.",
        ),
        (
            "Assignment",
            "As observed; exchangeable given the baseline covariates (recorded factors at "
            "referral, deprivation, authority, age band, sex, birth cohort, prior KS2, prior "
            "emergency admissions) and the time-varying confounders recorded before the start "
            "of year k: {confounders}.",
        ),
        (
            "Time zero",
            "The start of year k: day 365k after the first referral (day 0 for k = 0); a "
            "record made at the review ending year k-1 is known at time zero.",
        ),
        (
            "Follow-up",
            "From time zero to the KS4 result (end of year 11); controls are censored on "
            "entering care later (a deviation from 'never'), the censoring undone by inverse "
            "probability of remaining uncensored given the time-varying confounders of each "
            "later year.",
        ),
        ("Outcome", "KS4 attainment score and level 2 including English and maths."),
        (
            "Estimand",
            "Per trial the average effect in the treated (ATT): the mean over the entrants of "
            "the outcome under their care minus the outcome had they never entered care "
            "before year 11; pooled across trials weighted by entrants (the ATT over all "
            "children looked after before year 11).",
        ),
        (
            "Analysis",
            "One pooled discrete-time model of entry per year; controls weighted by the odds "
            "of entry times the inverse probability of staying out of care, normalised per "
            "trial; child-clustered sandwich standard errors (the entry model's estimation "
            "included).",
        ),
    ),
)

ABSENCE_MSM = TrialProtocol(
    "absence_msm",
    "Marginal structural model of yearly absence by years since entry to care",
    (
        (
            "Eligibility",
            "Every school year of the cohort's children from the index academic year on.",
        ),
        (
            "Treatment strategies",
            "The child's care so far versus never entering care, in looked-after years j whole "
            "years after entry (j = 0 to {last_year}, the last: that many or more).",
        ),
        (
            "Assignment",
            "Entry to care modelled year by year given the baseline covariates and the "
            "time-varying confounders as of 1 September of each year ({confounders}); "
            "stabilised weights, truncated at the 1st and 99th percentiles.",
        ),
        ("Time zero", "The index academic year (the first social-services contact)."),
        ("Follow-up", "Every later school year with an absence record."),
        ("Outcome", "The school year's absence rate."),
        (
            "Estimand",
            "The mean over looked-after pupil-years j years after entry of the absence rate "
            "under care minus that under never entering care (percentage points).",
        ),
        (
            "Analysis",
            "Weighted least squares of the absence rate on one indicator per year since entry, "
            "years since index, age and the baseline covariates; child-clustered sandwich "
            "standard errors.",
        ),
    ),
)

HAZARD_BY_YEARS = TrialProtocol(
    "hazard_by_years_since_entry",
    "Hazard ratio of hospital outcomes by years since entry to care",
    (
        ("Eligibility", "Every child of the cohort, from the first social-services contact."),
        (
            "Treatment strategies",
            "Looked after, j whole years since first entry (j = 0 to {last_year}, the last: "
            "that many or more), versus not looked after.",
        ),
        (
            "Assignment",
            "Care as a time-varying exposure adjusted for the baseline covariates, with a "
            "baseline hazard per local authority.",
        ),
        ("Time zero", "The first social-services contact (age in months as the clock)."),
        ("Follow-up", "To the first event, age 18, leaving the region or death."),
        ("Outcome", "The first hospital admission for the outcome."),
        (
            "Estimand",
            "The conditional hazard ratio while looked after j years after first entry "
            "against not looked after.",
        ),
        (
            "Analysis",
            "Time-varying Cox model with care split at the anniversaries of first entry.",
        ),
    ),
)

PROTOCOLS: dict[str, TrialProtocol] = {
    p.estimator: p for p in (SEQUENTIAL_TRIALS, ABSENCE_MSM, HAZARD_BY_YEARS)
}


def protocol_rows(protocol: TrialProtocol, analysis: Analysis) -> list[tuple[str, str]]:
    """The protocol's (element, text) rows with the analysis's declared options filled in."""
    from models.estimators import ESTIMATORS

    # the options as the estimator reads them (its defaults where the config is silent)
    options = ESTIMATORS[analysis.estimator].Options.model_validate(analysis.options or {})
    confounders = getattr(options, "confounders", ())
    named = ", ".join(label(str(c)).lower() for c in confounders) or "none (baseline only)"
    last_year = str(getattr(options, "max_years_since_entry", ""))
    return [
        (element, text.format(confounders=named, last_year=last_year))
        for element, text in protocol.elements
    ]
