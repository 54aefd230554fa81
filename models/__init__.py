"""Outcome models with a lifelines-like fit / summary / plot API, and disclosure control.

The model stage runs one loop over the analyses the study config declares
(:mod:`schemas.analyses`): :mod:`models.estimators` holds one class per estimator,
:mod:`models.run` the loop, :mod:`models.outputs` what it writes."""

from models.disclosure import DisclosureSettings, control_counts, control_estimates
from models.effects import Estimate, ExposureEffectFitter, e_value
from models.estimators import (
    ESTIMATORS,
    AnalysisEstimator,
    CohortData,
    candidate_designs,
    choose_outcome_design,
    fit_propensity,
    register,
)
from models.propensity import PropensityScoreFitter, design_matrix
from models.run import ModelSummary, load_cohort, run_analyses, run_models
from models.settings import ModelSettings
from models.survival import PiecewisePoissonFitter, TimeVaryingCoxFitter

__all__ = [
    "ESTIMATORS",
    "AnalysisEstimator",
    "CohortData",
    "DisclosureSettings",
    "Estimate",
    "ExposureEffectFitter",
    "ModelSettings",
    "ModelSummary",
    "PiecewisePoissonFitter",
    "PropensityScoreFitter",
    "TimeVaryingCoxFitter",
    "candidate_designs",
    "choose_outcome_design",
    "control_counts",
    "control_estimates",
    "design_matrix",
    "e_value",
    "fit_propensity",
    "load_cohort",
    "register",
    "run_analyses",
    "run_models",
]
