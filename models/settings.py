"""What the model stage adjusts for and how (``ModelSettings``); saved with every run in
``RUN/results/model_settings.yaml`` and set by the ``model:`` section of the run settings.

The fitters take their defaults from here (``PropensityScoreFitter.from_settings``,
``ExposureEffectFitter.from_settings``), so the stage and a notebook fit the same models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.disclosure import DisclosureSettings

Link = Literal["logit", "cloglog"]
Design = Literal["main", "splines", "splines_interactions"]
ADVERSITIES = [
    "physical_abuse",
    "parental_mental_ill_health",
    "parental_substance_misuse",
    "domestic_abuse",
]


class ModelSettings(BaseModel):
    """What to adjust for and how; saved with every run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    covariates: list[str] = Field(
        default_factory=lambda: [
            *ADVERSITIES,
            "parental_learning_disability",
            "disability",
            "deprivation_decile",
            "sex",
            "birth_cohort",
            "age_band_at_index",
            "la_code",
            "prior_ks2_expected",
            "prior_ks2_missing",
            "prior_emergency_admissions",
        ]
    )
    categorical: list[str] = Field(default_factory=lambda: ["sex", "la_code", "age_band_at_index"])
    survival_covariates: list[str] = Field(
        default_factory=lambda: [
            *ADVERSITIES,
            "parental_learning_disability",
            "disability",
            "deprivation_decile",
            "sex_male",
            "birth_cohort",
            "age_at_index",
            # DOMAIN.md's adjustment set also names the local authority and prior attainment /
            # prior health-service use measured before care: as in the education models
            "la_code",
            "prior_ks2_expected",
            "prior_ks2_missing",
            "prior_emergency_admissions",
        ]
    )
    # No truncation by default: where the exposure is near-certain for some children (young at
    # the index date, several recorded adversities) the ATT weights of their few unexposed
    # look-alikes are large, and capping them biases the ATT towards the unadjusted contrast.
    # Extreme weights and the effective sample size are reported instead.
    weight_truncation_percentile: float | None = None
    trim: float = 0.0
    balance_threshold: float = 0.1
    # Propensity and outcome designs: candidates, chosen by cross-validation (see
    # models/propensity.py). "main" is `covariates` as given; "splines" adds restricted cubic
    # splines (`spline_knots`), the capped count of recorded adversities (`count_of`);
    # "splines_interactions" adds `interaction_with` x each of `interaction_terms`.
    # "balancing": logistic propensity fitted so the weighted unexposed means of the
    # `balancing_design` columns equal the exposed means exactly (entropy balancing, ATT-CBPS);
    # "likelihood": the (design, link) with the smallest cross-validated deviance among
    # `propensity_designs` x `propensity_links`, fitted by maximum likelihood.
    propensity_method: Literal["balancing", "likelihood"] = "balancing"
    balancing_design: Design = "main"
    propensity_designs: tuple[Design, ...] = ("main", "splines", "splines_interactions")
    propensity_links: tuple[Link, ...] = ("logit", "cloglog")
    outcome_designs: tuple[Design, ...] = ("main", "splines", "splines_interactions")
    spline_knots: dict[str, int] = Field(
        default_factory=lambda: {"age_at_index": 5, "deprivation_decile": 4}
    )
    count_of: list[str] = Field(
        default_factory=lambda: [*ADVERSITIES, "parental_learning_disability"]
    )
    interaction_with: str | None = "age_at_index"
    interaction_terms: list[str] = Field(
        default_factory=lambda: [
            "n_recorded_adversities",
            "deprivation_decile",
            "physical_abuse",
            "prior_ks2_missing",
        ]
    )
    cv_folds: int = Field(5, ge=2, le=20)
    cv_seed: int = 20240601
    # Standard errors of the IPW and AIPW estimates: bootstrap (children resampled within
    # exposure groups, weights and outcome models refitted) with this many replicates; 0 = the
    # analytic ones (stacked sandwich for balancing IPW, influence function for AIPW).
    bootstrap_replicates: int = Field(200, ge=0)
    # Standard errors of the time-varying Cox model: "robust" (sandwich clustered on the child,
    # Lin & Wei 1989; right when the model leaves out prognostic factors, as any adjustment
    # set of recorded covariates does) or "model" (inverse information).
    cox_standard_errors: Literal["robust", "model"] = "model"
    # How many processes fit the analyses side by side (forked, Linux; 1 = in the stage's own
    # process). The results are the same for any number: each analysis is fitted whole by one
    # process, and analyses that share a computed value by the same one, in declared order.
    # Each process adds its own fits' memory (at 1,000,000 children see docs/benchmarks.md).
    # At 1,000,000 children two processes take about half the time of one (docs/benchmarks.md).
    processes: int = Field(2, ge=1, le=64)
    disclosure: DisclosureSettings = DisclosureSettings()

    @field_validator("bootstrap_replicates")
    @classmethod
    def _enough_replicates(cls, v: int) -> int:
        # the bootstrap SE is used only when at least 20 replicates are usable
        if 0 < v < 20:
            raise ValueError(f"{v} replicates: use 0 (analytic standard errors) or at least 20")
        return v
