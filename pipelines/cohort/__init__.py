"""Cohort derivation: study config -> DuckDB SQL -> cohort tables in the analysis zone."""

from pipelines.cohort.build import CohortSummary, build_cohort
from pipelines.cohort.config import StudyConfig, load_study_config

__all__ = ["CohortSummary", "StudyConfig", "build_cohort", "load_study_config"]
