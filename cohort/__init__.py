"""Cohort derivation: study config -> DuckDB SQL -> cohort tables in the analysis zone."""

from cohort.build import CohortSummary, build_cohort
from cohort.config import StudyConfig, load_study_config

__all__ = ["CohortSummary", "StudyConfig", "build_cohort", "load_study_config"]
