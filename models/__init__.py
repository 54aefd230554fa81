"""Outcome models with a lifelines-like fit / summary / plot API, and disclosure control."""

from models.disclosure import DisclosureSettings, control_counts, control_estimates
from models.effects import Estimate, ExposureEffectFitter, e_value
from models.propensity import PropensityScoreFitter, design_matrix
from models.stage import (
    ModelSettings,
    ModelSummary,
    candidate_designs,
    choose_outcome_design,
    fit_propensity,
    run_models,
)
from models.survival import PiecewisePoissonFitter, TimeVaryingCoxFitter

__all__ = [
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
    "run_models",
]
