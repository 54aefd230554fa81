"""evaluation.true_links: the run's estimates refitted on the world's true links."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ground.errors import RunStateError


def test_refit_on_true_links_fits_only_the_analyses_asked_for(
    full_run: Path, world: Path, tmp_path: Path
) -> None:
    """Refitting only the hospital outcomes (what benchmarks/linkage_error.py --main-only
    does for the health half of the main estimates) gives exactly their rows, and on the
    session's `default` world, where the linker's links are nearly all right, hazard ratios
    within a quarter of a standard error of the run's own."""
    from evaluation.true_links import refit_on_true_links
    from models.settings import ModelSettings
    from schemas.analyses import load_run_analyses

    declared = load_run_analyses(full_run / "cohort" / "study_config.yaml")
    hospital = [a for a in declared if a.name == "time_to_event"]
    refit = refit_on_true_links(
        run_dir=full_run,
        truth_dir=world / "truth",
        out_dir=tmp_path / "true_links",
        secret=b"true-link-test-secret-0123456789",
        model_settings=ModelSettings(bootstrap_replicates=0),
        analyses=hospital,
    )
    assert set(refit["method"]) == {"cox_tv", "cox_tv_unadjusted", "poisson_pw"}
    run = pd.read_csv(full_run / "results" / "estimates.csv")
    keys = ["outcome", "contrast", "method", "scale"]
    run_cox = run[(run["method"] == "cox_tv") & (run["contrast"] == "cla_vs_nla")]
    both = refit[refit["method"] == "cox_tv"].merge(run_cox, on=keys, suffixes=("", "_run"))
    assert len(both) == len(run_cox) > 0, "every outcome of the run refitted"
    with np.errstate(divide="ignore"):
        se = (np.log(both["ci_high_run"]) - np.log(both["ci_low_run"])) / (2 * 1.959964)
        shift = (np.log(both["estimate"]) - np.log(both["estimate_run"])).abs()
    # at 2,500 children the rare outcomes' fits are degenerate (log-scale SE in the tens, or none):
    # compare the informative ones (emergency admission and self-harm in the session world)
    informative = se < 2
    assert informative.sum() >= 2
    assert (shift[informative] < 0.25 * se[informative]).all(), both.assign(shift_in_se=shift / se)[
        ["outcome", "shift_in_se"]
    ]


def test_refit_on_true_links_names_a_folder_that_is_not_a_truth(
    full_run: Path, tmp_path: Path
) -> None:
    from evaluation.true_links import refit_on_true_links

    with pytest.raises(RunStateError, match="record_person.parquet not found"):
        refit_on_true_links(
            run_dir=full_run, truth_dir=tmp_path, out_dir=tmp_path / "out", secret=b"x" * 20
        )
