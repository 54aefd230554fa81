"""Cohort derivation: study config -> named DuckDB SQL steps -> cohort tables in the analysis zone."""

from cohort.build import CohortSummary, build_cohort, cohort_steps
from cohort.config import StudyConfig, load_study_config
from cohort.steps import CohortSteps, Step, UnknownStepError

__all__ = [
    "CohortSteps",
    "CohortSummary",
    "Step",
    "StudyConfig",
    "UnknownStepError",
    "build_cohort",
    "cohort_steps",
    "load_study_config",
]
