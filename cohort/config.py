"""The study configuration: a typed schema, validated before any work starts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ground.config_files import read_yaml_mapping
from ground.errors import ConfigError
from schemas.analyses import DEFAULT_ANALYSES, Analysis
from schemas.contracts import load_codelist

DEFAULT_CONFIG = Path(__file__).parent / "study_default.yaml"
KNOWN_OUTCOMES = (
    "self_harm",
    "emergency_admission",
    "mental_health_admission",
    "appendicitis",
    "dental_caries",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Strict):
    start: dt.date
    end: dt.date

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end < self.start:
            raise ValueError(f"window ends ({self.end}) before it starts ({self.start})")
        return self


class BirthCohorts(_Strict):
    first: int = Field(2000, ge=1980, le=2030)
    last: int = Field(2011, ge=1980, le=2030)

    @model_validator(mode="after")
    def _ordered(self) -> BirthCohorts:
        if self.last < self.first:
            raise ValueError(f"last birth cohort {self.last} is before first {self.first}")
        return self


class Exposure(_Strict):
    """Looked after on or after the index date; long care = a period of at least this length."""

    long_care_days: int = Field(365, ge=1)
    exclude_care_before_index: bool = True


class Covariates(_Strict):
    """Pre-care covariates: recorded on or before the index date (and so before care entry)."""

    window: Literal["on_or_before_index"] = "on_or_before_index"
    missing: Literal["indicator", "mode"] = "indicator"


class Outcome(_Strict):
    """A time-to-event outcome: first qualifying hospital event after the index date."""

    name: str
    codelist_group: str | None = None
    diagnosis_position: Literal["primary", "any"] = "primary"
    sources: tuple[Literal["hospital_admissions", "emergency_department"], ...] = (
        "hospital_admissions",
    )
    admission_method_group: Literal["emergency", "elective", "any"] = "any"
    exclude_groups: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _known(self) -> Outcome:
        groups = load_codelist("icd10_groups")
        for g in (self.codelist_group, *self.exclude_groups):
            if g is not None and g not in groups:
                raise ValueError(
                    f"code list group {g!r} does not exist; known: {', '.join(groups)}"
                )
        return self


class Censoring(_Strict):
    at_age: int = Field(18, ge=1, le=25)
    at_leaving_region: bool = True
    at_death: bool = True


class LinkQuality(_Strict):
    restrict_to_high_quality: bool = False


class StudyConfig(_Strict):
    """Everything that defines the cohort; saved with every run."""

    study_window: Window = Window(start=dt.date(2000, 1, 1), end=dt.date(2024, 8, 31))
    birth_cohorts: BirthCohorts = BirthCohorts()
    exposure: Exposure = Exposure()
    covariates: Covariates = Covariates()
    outcomes: tuple[Outcome, ...] = ()
    censoring: Censoring = Censoring()
    link_quality: LinkQuality = LinkQuality()
    persistent_absence_rate: float = Field(0.10, gt=0, lt=1)
    # what the model stage fits (schemas/analyses.py, docs/models.md#analyses); the default is
    # the study's analyses as published
    analyses: tuple[Analysis, ...] = DEFAULT_ANALYSES

    @model_validator(mode="after")
    def _analyses_named_once(self) -> StudyConfig:
        names = [a.name for a in self.analyses]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"analyses named more than once: {', '.join(twice)}")
        return self

    @model_validator(mode="after")
    def _outcomes_known(self) -> StudyConfig:
        for o in self.outcomes:
            if o.name not in KNOWN_OUTCOMES:
                raise ValueError(
                    f"unknown outcome {o.name!r}; known outcomes: {', '.join(KNOWN_OUTCOMES)}"
                )
        return self


def load_study_config(path: str | Path | None = None) -> StudyConfig:
    """Load and validate a study config (the shipped default when ``path`` is None)."""
    path = Path(path) if path else DEFAULT_CONFIG
    data = read_yaml_mapping(path, "study config")
    if isinstance(data.get("covariates"), dict):
        w = data["covariates"].get("window")
        if w and w != "on_or_before_index":
            raise ConfigError(
                f"covariates.window: {w!r} would measure covariates after exposure can start; "
                "allowed: on_or_before_index"
            )
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            msgs.append(f"`{key}`: {e['msg']}")
        raise ConfigError(f"invalid study config {path}: " + "; ".join(msgs)) from None


def config_to_yaml(config: StudyConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
