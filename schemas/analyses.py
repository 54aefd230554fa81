"""The study's analyses declared as data (the model stage runs one loop over them).

Modelled on OHDSI CohortMethod's ``createCmAnalysis`` / ``runCmAnalyses``: an analysis names an
estimator and what it is applied to (outcomes, the contrast its rows are filed under, the
population) plus the estimator's own options; the outputs (results, figures, the report, the
release tables) read the same declarations to know where each row belongs.

Where the declarations come from: the ``analyses:`` section of the study config
(``cohort/study_default.yaml``, ``cohort.config.StudyConfig.analyses``), saved with the cohort
in ``RUN/cohort/study_config.yaml``. The model stage and the report read that saved copy through
:func:`load_run_analyses`, so a run's estimates and its report follow the declarations the
cohort was built with. A run folder built before the section existed gets
:data:`DEFAULT_ANALYSES` (today's analyses).

The estimator's ``options`` are checked by the estimator class (``models.estimators``) before
any model is fitted; everything else here is checked when the study config is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ground.config_files import read_yaml_mapping
from ground.errors import ConfigError

# Which part of report.html shows an analysis's rows: the main estimates table, the
# effect-modification table or the high-quality-links table of the sensitivity section;
# "results_only": written to results/ and release/ but not tabled in the report.
ReportSection = Literal["estimates", "effect_modification", "high_quality_links", "results_only"]
# Every child of the cohort, or only those all of whose records were linked at or above the
# high-quality threshold (the sensitivity population; its rows' methods get the suffix
# "_high_quality_links").
Population = Literal["all", "high_quality_links"]
# A survival analysis's outcomes may be "every time-to-event outcome of the cohort", the ones the
# study config's `outcomes:` section defines (cohort.person_time).
EVERY_TIME_TO_EVENT_OUTCOME = "every_time_to_event_outcome"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _identifier(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"{v!r} must be lower-case letters, digits and _ (a-z first)")
    return v


def _identifier_or_empty(v: str) -> str:
    return v if v == "" else _identifier(v)


def _identifier_keys(v: dict[str, Any]) -> dict[str, Any]:
    for k in v:
        _identifier(k)
    return v


# names of analyses, estimators, outcomes, contrasts, methods and option keys: what ends up in
# results' columns and file names, never free text
Name = Annotated[str, AfterValidator(_identifier)]


class Analysis(BaseModel):
    """One declared analysis: ``estimator`` applied to ``outcomes`` in ``population``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    # free text: progress messages and docs
    label: str
    # the name of an estimator class registered in models.estimators
    estimator: Name
    outcomes: tuple[Name, ...] | Literal["every_time_to_event_outcome"] = ()
    # the contrast column of results/estimates.csv (an estimator that writes several, such as
    # effect_modification, names its rows itself)
    contrast: Annotated[str, AfterValidator(_identifier_or_empty)] = ""
    population: Population = "all"
    # the estimator's own options, checked by its class (models/estimators.py)
    options: Annotated[dict[str, Any], AfterValidator(_identifier_keys)] = Field(
        default_factory=dict
    )
    report_section: ReportSection = "estimates"
    # outcomes of this analysis that care cannot affect: shown again in the report's
    # negative-control table
    negative_controls: tuple[Name, ...] = ()
    # which of the analysis's methods (as in the `method` column, without a population suffix)
    # go to the forest plots, to the flow's headline artifact and get an E-value
    forest_plot_methods: tuple[Name, ...] = ()
    headline_methods: tuple[Name, ...] = ()
    e_value_methods: tuple[Name, ...] = ()

    @property
    def method_suffix(self) -> str:
        """What this analysis's population adds to its rows' method names."""
        return "" if self.population == "all" else f"_{self.population}"


def _education(contrast: str, exposed: list[str], label: str, forest: bool) -> dict[str, Any]:
    return {
        "name": f"ks4_{contrast}",
        "label": label,
        "estimator": "exposure_effect",
        "outcomes": ["ks4_score", "ks4_level2_inclusive"],
        "contrast": contrast,
        "options": {
            "exposure": "ks4_care_group",
            "exposed": exposed,
            "unexposed": ["none"],
            "methods": ["unadjusted", "regression", "ipw", "aipw"],
        },
        "forest_plot_methods": ["unadjusted", "ipw", "aipw"] if forest else [],
        "headline_methods": ["aipw"] if forest else [],
        "e_value_methods": ["regression", "aipw"],
    }


# Today's analyses, in the order their rows appear in results/estimates.csv. The same list is
# the `analyses:` section of cohort/study_default.yaml (tests/test_models.py checks they agree).
DEFAULT_ANALYSES_DATA: list[dict[str, Any]] = [
    _education("cla_vs_nla", ["long", "short"], "KS4: looked after before year 11 vs NLA", True),
    _education("long_vs_nla", ["long"], "KS4: long care vs NLA", False),
    _education("short_vs_nla", ["short"], "KS4: short care vs NLA", False),
    {
        "name": "ks4_per_placement_move",
        "label": "KS4 per placement move, among the looked after",
        "estimator": "care_characteristic",
        "outcomes": ["ks4_score"],
        "contrast": "per_placement_move",
        "options": {"term": "ks4_placement_moves"},
    },
    {
        "name": "ks4_per_year_age_at_entry",
        "label": "KS4 per year of age at care entry, among the looked after",
        "estimator": "care_characteristic",
        "outcomes": ["ks4_score"],
        "contrast": "per_year_age_at_entry",
        "options": {"term": "age_at_entry"},
        "report_section": "results_only",
    },
    {
        "name": "ks4_effect_modification",
        "label": "KS4: adversity x looked after",
        "estimator": "effect_modification",
        "outcomes": ["ks4_score"],
        "options": {
            "modifiers": [
                "physical_abuse",
                "parental_mental_ill_health",
                "parental_substance_misuse",
                "domestic_abuse",
            ]
        },
        "report_section": "effect_modification",
    },
    {
        "name": "absence_looked_after_year",
        "label": "Absence: looked-after years vs other years (GEE)",
        "estimator": "absence_gee",
        "outcomes": ["absence_rate"],
        "contrast": "looked_after_year",
    },
    {
        "name": "absence_per_year_looked_after",
        "label": "Absence: per full school year looked after (GEE on the share of the year)",
        "estimator": "absence_gee",
        "outcomes": ["absence_rate"],
        "contrast": "looked_after_share",
        "options": {"exposure": "looked_after_share"},
    },
    {
        "name": "time_to_event",
        "label": "Hospital outcomes: care as a time-varying exposure",
        "estimator": "time_varying_survival",
        "outcomes": EVERY_TIME_TO_EVENT_OUTCOME,
        "contrast": "cla_vs_nla",
        "options": {
            "models": ["cox_tv", "cox_tv_unadjusted", "poisson_pw"],
            "proportional_hazards_check": True,
        },
        "negative_controls": ["appendicitis", "dental_caries"],
        "forest_plot_methods": ["cox_tv_unadjusted", "cox_tv", "poisson_pw"],
        "headline_methods": ["cox_tv"],
        "e_value_methods": ["cox_tv"],
    },
    {
        "name": "time_to_event_high_quality_links",
        "label": "Hospital outcomes, high-quality links only",
        "estimator": "time_varying_survival",
        "outcomes": EVERY_TIME_TO_EVENT_OUTCOME,
        "contrast": "cla_vs_nla",
        "population": "high_quality_links",
        "options": {"models": ["cox_tv"], "proportional_hazards_check": False},
        "report_section": "high_quality_links",
        "negative_controls": ["appendicitis", "dental_caries"],
    },
    *(
        {
            "name": f"ks4_{contrast}_high_quality_links",
            "label": f"KS4 {contrast}, high-quality links only (AIPW, analytic SE)",
            "estimator": "exposure_effect",
            "outcomes": ["ks4_score", "ks4_level2_inclusive"],
            "contrast": contrast,
            "population": "high_quality_links",
            # analytic standard errors: the restriction is read for its point estimates, and a
            # second bootstrap would double the stage's cost at national size
            "options": {
                "exposure": "ks4_care_group",
                "exposed": exposed,
                "unexposed": ["none"],
                "methods": ["aipw"],
                "bootstrap": False,
            },
            "report_section": "high_quality_links",
        }
        for contrast, exposed in (
            ("cla_vs_nla", ["long", "short"]),
            ("long_vs_nla", ["long"]),
            ("short_vs_nla", ["short"]),
        )
    ),
    {
        "name": "kaplan_meier",
        "label": "Kaplan-Meier cumulative incidence by group (figures and release/km_yearly.csv)",
        "estimator": "kaplan_meier",
        "outcomes": ["self_harm", "emergency_admission"],
        "report_section": "results_only",
    },
    # g-methods for care entry as a time-varying treatment (docs/gmethods.md)
    {
        "name": "ks4_sequential_trials",
        "label": "KS4: sequential trials of care entry, one per year since referral "
        "(time-varying confounders)",
        "estimator": "sequential_trials",
        "outcomes": ["ks4_score", "ks4_level2_inclusive"],
        "contrast": "cla_vs_nla",
        "options": {"confounders": ["new_factors_recorded", "new_protection_plan"]},
    },
    {
        "name": "ks4_enter_now_vs_not_now",
        "label": "KS4: sequential trials of care entry, entering this year versus not this "
        "year (intention to treat per trial, doubly robust)",
        "estimator": "sequential_trials",
        "outcomes": ["ks4_score", "ks4_level2_inclusive"],
        "contrast": "enter_now_vs_not_now",
        "options": {
            "confounders": ["new_factors_recorded", "new_protection_plan"],
            "comparator": "not_now",
            "augment": True,
            "method": "trial_emulation_itt_dr",
        },
    },
    {
        "name": "absence_by_years_since_entry",
        "label": "Absence by years since entry: marginal structural model, stabilised "
        "time-varying weights",
        "estimator": "absence_msm",
        "outcomes": ["absence_rate"],
        "contrast": "looked_after_year_since_entry",
        "options": {
            "confounders": ["new_factors_recorded", "new_protection_plan"],
            "max_years_since_entry": 4,
        },
    },
    # effect of care within pre-care adversity strata and the conditional effect (H7, #20)
    {
        "name": "ks4_by_adversity",
        "label": "KS4: effect of care with and without each recorded adversity, and by "
        "deprivation (doubly robust ATT per stratum)",
        "estimator": "stratified_effect",
        "outcomes": ["ks4_score", "ks4_level2_inclusive"],
        "contrast": "cla_vs_nla",
        "report_section": "results_only",
    },
    {
        "name": "ks4_conditional_effect",
        "label": "KS4: conditional effect of care by adversity count and deprivation (DR-learner)",
        "estimator": "dr_learner",
        "outcomes": ["ks4_score"],
        "contrast": "cla_vs_nla",
        "report_section": "results_only",
    },
    {
        "name": "hazard_by_years_since_entry",
        "label": "Hospital outcomes: hazard ratio while looked after by whole years since entry "
        "(time-varying Cox)",
        "estimator": "hazard_by_years_since_entry",
        "outcomes": ["self_harm", "emergency_admission", "mental_health_admission"],
        "contrast": "cla_vs_nla",
        "report_section": "results_only",
    },
    # the IPW marginal structural model of the time-to-event outcomes (docs/gmethods.md 3b)
    {
        "name": "hazard_msm",
        "label": "Hospital outcomes: marginal structural model, stabilised time-varying weights "
        "(time-varying confounders)",
        "estimator": "hazard_msm",
        "outcomes": [
            "self_harm",
            "emergency_admission",
            "mental_health_admission",
            "dental_caries",
        ],
        "contrast": "cla_vs_nla",
        "options": {"confounders": ["new_factors_recorded", "new_protection_plan"]},
        "negative_controls": ["dental_caries"],
    },
]


def parse_analyses(data: object, where: str = "analyses") -> tuple[Analysis, ...]:
    """The declarations in ``data`` (a list of mappings, as in YAML), checked: a
    :class:`ConfigError` names the analysis (position and name) and the bad key."""
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where}: must be a non-empty list of analyses")
    out: list[Analysis] = []
    for i, item in enumerate(data):
        name = item.get("name", "?") if isinstance(item, dict) else "?"
        try:
            out.append(Analysis.model_validate(item))
        except ValidationError as exc:
            msgs = [
                f"`{'.'.join(str(p) for p in e['loc']) or '(the entry)'}`: {e['msg']}"
                for e in exc.errors()
            ]
            raise ConfigError(
                f"{where}[{i}] ({name}): " + "; ".join(msgs) + " (see docs/models.md#analyses)"
            ) from None
    check_unique(out, where)
    return tuple(out)


def check_unique(analyses: Sequence[Analysis], where: str = "analyses") -> None:
    """Two analyses may not share a name (results and the report file rows by it)."""
    seen: set[str] = set()
    for a in analyses:
        if a.name in seen:
            raise ConfigError(f"{where}: two analyses are named {a.name!r}; names must differ")
        seen.add(a.name)


DEFAULT_ANALYSES: tuple[Analysis, ...] = parse_analyses(DEFAULT_ANALYSES_DATA, "default analyses")


def load_run_analyses(study_config: Path) -> tuple[Analysis, ...]:
    """The ``analyses:`` section of a run's saved study config (``RUN/cohort/study_config.yaml``);
    :data:`DEFAULT_ANALYSES` when the file or the section is absent (a run built before
    analyses were declared)."""
    if not study_config.exists():
        return DEFAULT_ANALYSES
    section = read_yaml_mapping(study_config, "study config").get("analyses")
    if section is None:
        return DEFAULT_ANALYSES
    return parse_analyses(section, f"{study_config}: analyses")
