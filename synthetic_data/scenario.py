"""Scenario: every parameter of the synthetic world, with defaults, as a typed schema.

A scenario file is YAML holding any subset of these keys (nested as below); everything missing
takes its default. Unknown keys and out-of-range values raise :class:`ConfigError` naming the key
and what is allowed. The effective scenario (all defaults filled in) is written to
``DIR/truth/scenario.yaml``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ground.config_files import read_yaml_mapping
from ground.errors import ConfigError
from synthetic_data.linkage_error import DifferentialNoise

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Population(_Strict):
    """People and places."""

    first_birth_year: int = Field(2000, ge=1990, le=2015)
    birth_years: int = Field(12, ge=10, le=20, description="number of birth cohorts (>= 10)")
    window_end: str = Field(
        "2024-08-31", description="end of observation (ISO date YYYY-MM-DD, 2000-2100)"
    )
    in_migrant_share: float = Field(
        0.08, ge=0, le=0.5, description="children entering the region after birth"
    )
    leave_region_rate: float = Field(0.008, ge=0, le=0.1, description="per year")
    death_rate: float = Field(0.00015, ge=0, le=0.01, description="per year, constant from birth")
    house_move_rate: float = Field(0.09, ge=0, le=1, description="house moves per year")
    cross_la_move_share: float = Field(0.2, ge=0, le=1)
    la_care_propensity_sd: float = Field(
        0.28, ge=0, le=1.5, description="SD of log care-rate multiplier between authorities"
    )

    @field_validator("window_end", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> str:
        if isinstance(v, dt.date):  # YAML reads an unquoted 2024-08-31 as a date
            v = v.isoformat()
        try:
            d = dt.date.fromisoformat(v)
        except (TypeError, ValueError):
            raise ValueError("must be an ISO date YYYY-MM-DD") from None
        if not 2000 <= d.year <= 2100 or len(v) != 10:
            raise ValueError("must be an ISO date YYYY-MM-DD between 2000 and 2100")
        return v

    @model_validator(mode="after")
    def _window_after_births(self) -> Population:
        last_birth_year = self.first_birth_year + self.birth_years - 1
        if dt.date.fromisoformat(self.window_end).year <= last_birth_year:
            raise ValueError(
                f"window_end {self.window_end} must fall after the last birth year "
                f"{last_birth_year} (first_birth_year + birth_years - 1)"
            )
        return self


class Adversity(_Strict):
    """Pre-care adversity: ever-prevalence in the whole population (before age 18)."""

    physical_abuse: float = Field(0.022, ge=0, le=1)
    parental_mental_ill_health: float = Field(0.065, ge=0, le=1)
    parental_substance_misuse: float = Field(0.045, ge=0, le=1)
    domestic_abuse: float = Field(0.065, ge=0, le=1)
    parental_learning_disability: float = Field(0.012, ge=0, le=1)
    family_risk_loading: float = Field(
        1.2, ge=0, le=3, description="shared latent family risk: correlates adversities"
    )
    deprivation_loading: float = Field(
        0.45, ge=0, le=2, description="family risk per SD of deprivation"
    )


class SocialServices(_Strict):
    """Referrals, recording and entry to care."""

    referral_prob_per_adversity: float = Field(0.55, ge=0, le=1)
    background_referral_rate: float = Field(
        0.0012, ge=0, le=0.1, description="per year, every child, unrelated to adversity"
    )
    recording_sensitivity: float = Field(
        0.85, ge=0, le=1, description="chance a present adversity is recorded"
    )
    care_base_rate: float = Field(
        0.022, ge=0, le=5, description="per year after referral, baseline"
    )
    care_log_hr_recorded_factor: float = Field(0.55, ge=-3, le=3)
    care_log_hr_physical_abuse: float = Field(0.9, ge=-3, le=3)
    care_log_hr_per_deprivation_decile: float = Field(
        0.22, ge=0, le=1, description="per decile more deprived"
    )
    long_care_share: float = Field(0.55, ge=0, le=1)
    placement_move_rate: float = Field(0.55, ge=0, le=5, description="moves per year in care")
    re_entry_prob: float = Field(
        0.15,
        ge=0,
        le=0.6,
        description="re-entry chance re_entry_prob/0.6 after a short period, x0.3 after a long one",
    )
    case_open_years: float = Field(
        2.2, gt=0, le=10, description="mean length of an episode of need"
    )
    late_record_share: float = Field(
        0.03,
        ge=0,
        le=0.5,
        description="share of assessment rows filed in the next census year's return",
    )


class AfterReferral(_Strict):
    """What happens after the first referral: yearly reviews while an episode of need is open,
    new adversity, later recording, child-protection plans, and how they move entry to care.
    All zero by default (the factors recorded at referral are then the only ones recorded in
    an episode and the care-entry hazard is fixed at the first referral)."""

    new_adversity_rate: float = Field(
        0.0,
        ge=0,
        le=2,
        description="per year after the first referral, per adversity kind the child lacks",
    )
    new_adversity_log_hr_family_risk: float = Field(0.5, ge=-3, le=3)
    reassessment_sensitivity: float = Field(
        0.0,
        ge=0,
        le=1,
        description="chance a yearly review records a present, unrecorded adversity",
    )
    cp_plan_prob_per_new_factor: float = Field(
        0.0, ge=0, le=1, description="chance a newly recorded factor starts a protection plan"
    )
    care_log_hr_new_factor: float = Field(
        0.0, ge=-3, le=3, description="care-entry log HR per factor recorded at a review"
    )
    care_log_hr_cp_plan: float = Field(
        0.0, ge=-3, le=3, description="care-entry log HR of a plan started at a review"
    )


class Effects(_Strict):
    """True causal effects of care. Education effects use care before the KS4 year."""

    ks4_long_care: float = Field(
        3.0, description="KS4 points, >= 365 days looked after before year 11"
    )
    ks4_short_care: float = Field(-3.0, description="KS4 points, 1-364 days looked after")
    ks4_per_placement_move: float = Field(-1.5, description="KS4 points per placement move")
    level2_log_or_long: float = Field(0.26)
    level2_log_or_short: float = Field(-0.22)
    absence_rate_looked_after: float = Field(
        -0.02, description="change in absence rate while looked after"
    )
    log_hr_self_harm: float = Field(0.47, description="log HR while looked after (1.6)")
    log_hr_emergency_admission: float = Field(0.262, description="log HR while looked after (1.3)")
    log_hr_mental_health_admission: float = Field(
        0.405, description="log HR while looked after (1.5)"
    )
    ks2_log_or_care: float = Field(
        0.0, description="log OR of KS2 expected standard, looked after before the KS2 year"
    )
    # effect modification (all zero by default: the same effect for every child)
    ks4_care_x_adversity: float = Field(
        0.0, description="KS4 points of care's effect per true adversity begun before entry"
    )
    ks4_care_per_year_in_care: float = Field(
        0.0, description="KS4 points of care's effect per year looked after before year 11"
    )
    ks4_care_per_year_age_at_entry: float = Field(
        0.0, description="KS4 points of care's effect per year of age at first entry above 10"
    )
    level2_log_or_care_x_adversity: float = Field(
        0.0, description="level-2 log OR of care per true adversity begun before entry"
    )
    absence_care_x_adversity: float = Field(
        0.0, description="absence-rate effect per true adversity begun before entry"
    )
    absence_care_per_year_since_entry: float = Field(
        0.0, description="absence-rate effect per year since first entry (0-4, capped)"
    )
    log_hr_care_x_adversity: float = Field(
        0.0, description="log HR of care per true adversity begun before entry (3 hazards)"
    )
    log_hr_care_per_year_since_entry: float = Field(
        0.0, description="log HR of care per year since first entry (0-4, capped; 3 hazards)"
    )
    new_adversity_log_hr_looked_after: float = Field(
        0.0, description="log HR of new adversity (after referral) while looked after"
    )


class Outcomes(_Strict):
    """Outcome processes apart from care (confounding paths)."""

    ks4_intercept: float = 58.0
    ks4_per_deprivation_decile: float = -1.8
    ks4_per_adversity: float = -9.0
    ks4_family_risk: float = -6.0
    ks4_noise_sd: float = Field(10.0, gt=0)
    self_harm_base_rate: float = Field(0.0025, ge=0, description="per year at ages 12-17")
    emergency_base_rate: float = Field(
        0.045, ge=0, description="per year (x3 at age 0, x1.5 at ages 1-4)"
    )
    mental_health_base_rate: float = Field(0.0018, ge=0)
    appendicitis_rate: float = Field(0.0012, ge=0)
    ed_injury_rate: float = Field(0.12, ge=0)
    elective_rate: float = Field(0.02, ge=0)
    log_hr_per_adversity: float = Field(0.35, description="outcome hazards per true adversity")
    log_hr_per_deprivation_decile: float = Field(0.05)
    dental_caries_rate: float = Field(
        0.0015, ge=0, description="negative control: per year from age 2, no care effect"
    )
    dental_caries_log_hr_per_la_propensity: float = Field(
        1.0, description="log HR per unit of the authority's log care-entry multiplier"
    )


class Noise(_Strict):
    """Identifier noise, as a share of records (or of people for person-level events)."""

    typo: float = Field(0.02, ge=0, le=1)
    nickname: float = Field(0.03, ge=0, le=1)
    surname_change_people: float = Field(0.04, ge=0, le=1)
    day_month_swap: float = Field(0.008, ge=0, le=1)
    missing_nhs_admissions: float = Field(0.06, ge=0, le=1)
    missing_nhs_ed: float = Field(0.2, ge=0, le=1)
    missing_nhs_register: float = Field(0.01, ge=0, le=1)
    care_census_has_upn: float = Field(0.6, ge=0, le=1)
    care_census_has_nhs: float = Field(0.4, ge=0, le=1)
    new_la_child_id_people: float = Field(
        0.03, ge=0, le=1, description="system change gives a new LA id"
    )
    stale_postcode: float = Field(0.05, ge=0, le=1)
    diacritics_dropped: float = Field(
        0.3, ge=0, le=1, description="share of diacritic names written without them"
    )
    differential: DifferentialNoise = Field(
        DifferentialNoise(),
        description="multipliers of these rates by group (synthetic_data/linkage_error.py)",
    )


class Defects(_Strict):
    """Data defects, as a share of records of each source."""

    duplicate_row: float = Field(0.003, ge=0, le=0.2)
    placeholder_date: float = Field(0.001, ge=0, le=0.2)
    referral_after_closure: float = Field(0.004, ge=0, le=0.2)
    code_outside_list: float = Field(0.001, ge=0, le=0.2)
    unparseable_date: float = Field(0.0008, ge=0, le=0.2)
    malformed_line: float = Field(0.0002, ge=0, le=0.05)
    nhs_number_wrong_length: float = Field(0.0005, ge=0, le=0.2)


class Scenario(_Strict):
    """The whole synthetic world."""

    name: str = "default"
    description: str = ""
    population: Population = Population()
    adversity: Adversity = Adversity()
    social_services: SocialServices = SocialServices()
    after_referral: AfterReferral = AfterReferral()
    effects: Effects = Effects()
    outcomes: Outcomes = Outcomes()
    noise: Noise = Noise()
    defects: Defects = Defects()


def _describe_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = e["loc"][:-1]
            model: Any = Scenario
            for part in section:
                model = model.model_fields[str(part)].annotation
            allowed = ", ".join(model.model_fields)
            lines.append(f"unknown key `{key}`; allowed keys here: {allowed}")
        else:
            lines.append(f"`{key}`: {e['msg']} (got {e.get('input')!r})")
    return f"invalid scenario {source}: " + "; ".join(lines)


def load_scenario(name_or_file: str | Path) -> Scenario:
    """Load a shipped scenario by name (``default``, ``null_effect``, ``messy``) or a YAML file."""
    path = Path(name_or_file)
    if not path.suffix:
        path = SCENARIO_DIR / f"{name_or_file}.yaml"
        if not path.exists():
            shipped = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
            raise ConfigError(
                f"unknown scenario {str(name_or_file)!r}; shipped scenarios: {shipped}, "
                "or give a path to a .yaml file"
            )
    data = read_yaml_mapping(path, "scenario file")
    data.setdefault("name", path.stem)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_error(exc, str(path))) from None


def scenario_to_yaml(scenario: Scenario) -> str:
    return yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
