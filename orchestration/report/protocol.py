"""The emulated trials' protocols, as data: each element of a target-trial protocol
(eligibility, treatment strategies, assignment, time zero, follow-up, outcome, causal contrast
or estimand, analysis) for each g-method estimator, in the words of docs/gmethods.md (the
sequential trials' and the MSM's as H14 wrote them for the report, 2026-12-02). The
report renders them as tables (:func:`protocol_rows`), filling in what the study config
declares (the time-varying confounders, the last year since entry modelled on its own), so a
changed declaration changes the page.

When an estimator's protocol changes, change it here and in docs/gmethods.md (the same words).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.estimators import ESTIMATORS
from orchestration.report.labels import label
from schemas.analyses import Analysis


@dataclass(frozen=True)
class TrialProtocol:
    """One emulated trial's protocol: ``elements`` are (element, text) in protocol order; a
    text may name ``{confounders}`` and ``{last_year}``, filled from the analysis's options."""

    estimator: str  # the registered estimator (models/estimators.py) it describes
    title: str
    elements: tuple[tuple[str, str], ...]
    caveat: str = ""  # printed under the protocol and beside the estimate


# rows the two sequential-trial protocols ("never" and "not now") share word for word
_TRIALS_ASSIGNMENT = (
    "Assignment",
    "As observed; assumed exchangeable given the baseline covariates (factors recorded "
    "at the referral, deprivation, local authority, age band, sex, birth cohort, KS2, "
    "prior emergency admissions) and the time-varying confounders recorded before the "
    "start of year k: {confounders}.",
)
_TRIALS_TIME_ZERO = (
    "Time zero",
    "The start of year k: day 365k after the first referral (day 0 for trial 0). A "
    "factor recorded at the review that ends year k-1 is known at time zero.",
)


SEQUENTIAL_TRIALS = TrialProtocol(
    "sequential_trials",
    "Sequential emulation of a trial of care entry (KS4), trial k at k = 0, 1, 2, ... whole "
    "years since the first referral",
    (
        (
            "Eligibility",
            "Children in need in the cohort with a KS4 result, first referred before their "
            "year 11 began, not looked after since the referral by the start of year k, and "
            "year 11 not yet begun; eligibility re-assessed at the start of every year, so a "
            "child can be eligible for several trials.",
        ),
        (
            "Treatment strategies",
            "(1) Enter care during year k (whatever care follows); (2) never enter care before "
            "year 11.",
        ),
        _TRIALS_ASSIGNMENT,
        _TRIALS_TIME_ZERO,
        (
            "Follow-up",
            "From time zero to the KS4 result at the end of year 11. Comparators who later "
            "enter care deviate from 'never' and are censored then; the censoring is undone by "
            "inverse probability of remaining out of care, given the time-varying confounders "
            "of each later year.",
        ),
        ("Outcome", "KS4 capped points score (0-90) and level 2 inclusive."),
        (
            "Causal contrast",
            "Per-protocol effect in those who entered: per trial, the mean over the entrants "
            "of the outcome had they entered in year k minus had they never entered before "
            "year 11 (ATT); pooled over trials weighted by entrants, the ATT of care before "
            "year 11.",
        ),
        (
            "Analysis",
            "One pooled discrete-time (complementary log-log) model of entry per year; "
            "comparator weight in trial k = p_k / prod_(j >= k) (1 - p_j) (ATT odds times "
            "censoring weights), normalised per trial; child-clustered sandwich standard "
            "errors (the entry model included) or a child bootstrap.",
        ),
    ),
    caveat=(
        "The 'never enter care before year 11' strategy is close to a positivity violation "
        "for children referred young who accumulate recorded factors: the comparator weights "
        "are then carried by a handful of children, and the trials' estimate can be biased "
        "(low, in the synthetic world with time-varying confounding, even with the world's own "
        "confounders and entry probabilities: docs/gmethods.md)."
    ),
)

# the same estimator with ``comparator: not_now``: each trial's intention-to-treat contrast
SEQUENTIAL_TRIALS_NOT_NOW = TrialProtocol(
    "sequential_trials",
    "Sequential emulation of a trial of care entry (KS4), enter now versus not now: trial k "
    "at k = 0, 1, 2, ... whole years since the first referral, intention to treat",
    (
        (
            "Eligibility",
            "Children in need in the cohort with a KS4 result, first referred before their "
            "year 11 began, not looked after since the referral by the start of year k, and "
            "year 11 not yet begun; eligibility re-assessed at the start of every year, so a "
            "child can be eligible for several trials (and a comparator in some before it "
            "enters in another).",
        ),
        (
            "Treatment strategies",
            "(1) Enter care during year k (whatever care follows); (2) do not enter care during "
            "year k, usual care after: the child may enter in a later year, as children in need "
            "who stay at home do.",
        ),
        _TRIALS_ASSIGNMENT,
        _TRIALS_TIME_ZERO,
        (
            "Follow-up",
            "From time zero to the KS4 result at the end of year 11, whatever happens after "
            "year k: no comparator is censored when it enters care later.",
        ),
        ("Outcome", "KS4 capped points score (0-90) and level 2 inclusive."),
        (
            "Causal contrast",
            "Intention-to-treat effect in those who entered: per trial, the mean over the "
            "entrants of the outcome had they entered in year k minus had they not entered in "
            "year k (and followed usual care after, a later entry included) (ATT); pooled over "
            "trials weighted by entrants. Smaller than the effect of care against never "
            "entering when many deferred children enter later.",
        ),
        (
            "Analysis",
            "One pooled discrete-time (complementary log-log) model of entry per year; "
            "comparator weight in trial k = p_k / (1 - p_k) (the ATT odds of year k only), "
            "normalised per trial. Doubly robust (as declared, option augment): a linear model "
            "of the outcome on the entry model's covariates, fitted in the comparators with "
            "their weights, is subtracted from every outcome before the weighted contrast, so "
            "the estimate is consistent if either model is right. Child-clustered sandwich "
            "standard errors from the stacked estimating equations (the entry model and the "
            "outcome model included, a child counted once however many trials it is in).",
        ),
    ),
    caveat=(
        "The contrast is 'now versus not now', not 'care versus never': it answers whether "
        "entering care this year rather than staying at home this year changes KS4, given "
        "that some of those who stay at home enter later."
    ),
)

ABSENCE_MSM = TrialProtocol(
    "absence_msm",
    "Marginal structural model of yearly absence by years since entry to care",
    (
        (
            "Eligibility",
            "Children in the cohort, school years from the index academic year on.",
        ),
        (
            "Treatment strategies",
            "Enter care at a given year (and the care that follows) versus never enter; the "
            "effect read in looked-after years j whole years after entry (j = 0 to "
            "{last_year}, the last: that many or more).",
        ),
        (
            "Assignment",
            "Entry to care modelled year by year given the baseline covariates and the "
            "time-varying confounders as of 1 September of each year ({confounders}); "
            "stabilised weights, truncated at the 0.1th and 99.9th percentiles.",
        ),
        ("Time zero", "The start of each school year (1 September)."),
        ("Follow-up", "Every school year with an absence record, from the index year on."),
        ("Outcome", "The school year's absence rate."),
        (
            "Estimand",
            "The effect of care so far against never entering, in looked-after years j whole "
            "years after entry: the mean over those pupil-years of the absence rate under care "
            "minus that under never entering (ATT over pupil-years, percentage points).",
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

HAZARD_MSM = TrialProtocol(
    "hazard_msm",
    "Marginal structural model of hospital outcomes: care as a time-varying treatment",
    (
        (
            "Eligibility",
            "Every child of the cohort (children in need), from the first social-services "
            "contact (the index date).",
        ),
        (
            "Treatment strategies",
            "Care as entered (looked after from first entry on) versus never entering care.",
        ),
        (
            "Assignment",
            "First entry to care modelled year by year since the index date, among children "
            "not yet looked after, given the baseline covariates (the survival models' set) "
            "and the time-varying confounders as of each year's start ({confounders}); "
            "stabilised weights (numerator: the baseline covariates and the year only), "
            "truncated at the 0.1th and 99.9th percentiles of the person-time rows' weights.",
        ),
        (
            "Time zero",
            "The index date (first social-services contact); the time-varying terms change at "
            "each anniversary of it.",
        ),
        ("Follow-up", "To the outcome's first event, age 18, leaving the region or death."),
        ("Outcome", "The first hospital admission for the outcome."),
        (
            "Estimand",
            "The hazard ratio of being looked after against never having entered care, in a "
            "population with the cohort's baseline covariates: care's total effect, including "
            "what runs through the adversity recorded after entry that care prevents.",
        ),
        (
            "Analysis",
            "Weighted piecewise-exponential (Poisson) model of the event on being looked "
            "after, year of age, whole years since the index and the baseline covariates, "
            "fitted on person-time summed into cells (exactly the row-level fit); "
            "child-clustered sandwich standard errors (the weights treated as known).",
        ),
    ),
    caveat=(
        "The model estimates care's total effect; where care also prevents adversity that "
        "raises the hazard, that is smaller than the effect of care with adversity held fixed "
        "(the Cox models' conditional hazard ratio). A few children who entered care against a "
        "near-zero modelled chance carry very large weights before truncation "
        "(results/diagnostics.csv: weight range and effective sample size)."
    ),
)

PROTOCOLS: dict[str, TrialProtocol] = {
    p.estimator: p for p in (SEQUENTIAL_TRIALS, ABSENCE_MSM, HAZARD_BY_YEARS, HAZARD_MSM)
}


def protocol_for(analysis: Analysis) -> TrialProtocol | None:
    """The protocol of a declared analysis (None when its estimator emulates no trial): the
    sequential trials' depends on their comparator (``never`` or ``not_now``)."""
    if analysis.estimator == "sequential_trials":
        options = ESTIMATORS[analysis.estimator].Options.model_validate(analysis.options or {})
        if getattr(options, "comparator", "never") == "not_now":
            return SEQUENTIAL_TRIALS_NOT_NOW
    return PROTOCOLS.get(analysis.estimator)


def protocol_rows(protocol: TrialProtocol, analysis: Analysis) -> list[tuple[str, str]]:
    """The protocol's (element, text) rows with the analysis's declared options filled in."""
    # the options as the estimator reads them (its defaults where the config is silent)
    options = ESTIMATORS[analysis.estimator].Options.model_validate(analysis.options or {})
    confounders = getattr(options, "confounders", ())
    named = ", ".join(label(str(c)).lower() for c in confounders) or "none (baseline only)"
    last_year = str(getattr(options, "max_years_since_entry", ""))
    return [
        (element, text.format(confounders=named, last_year=last_year))
        for element, text in protocol.elements
    ]
