"""Outcome models with a lifelines-like fit / summary / plot API, and disclosure control.

The model stage runs one loop over the analyses the study config declares
(:mod:`schemas.analyses`): :mod:`models.estimators` holds one class per estimator,
:mod:`models.run` the loop, :mod:`models.outputs` what it writes."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it. Imported on first use, so reading the model settings
# (every `cohort <stage> --settings`) does not load statsmodels, lifelines and scikit-learn.
_HOMES = {
    "DisclosureSettings": "models.disclosure",
    "control_counts": "models.disclosure",
    "control_estimates": "models.disclosure",
    "Estimate": "models.effects",
    "ExposureEffectFitter": "models.effects",
    "e_value": "models.effects",
    "ESTIMATORS": "models.estimators",
    "AnalysisEstimator": "models.estimators",
    "CohortData": "models.estimators",
    "candidate_designs": "models.estimators",
    "choose_outcome_design": "models.estimators",
    "fit_propensity": "models.estimators",
    "register": "models.estimators",
    "PropensityScoreFitter": "models.propensity",
    "design_matrix": "models.propensity",
    "ModelSummary": "models.run",
    "load_cohort": "models.run",
    "run_analyses": "models.run",
    "run_models": "models.run",
    "ModelSettings": "models.settings",
    "PiecewisePoissonFitter": "models.survival",
    "TimeVaryingCoxFitter": "models.survival",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


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
