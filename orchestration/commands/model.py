"""``cohort model``: fit the outcome models on a run's cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run: Annotated[Path, typer.Option("--run", help="Run folder after `cohort build`.")],
) -> None:
    """Fit the analyses the study config declares (its `analyses:` section, as saved with the
    cohort in RUN/cohort/study_config.yaml): by default propensity scores, weights and balance;
    KS4 and level-2 effects (unadjusted, regression, IPW, AIPW); time-varying Cox and Poisson;
    GEE; effect modification; sensitivity analyses.

    Writes RUN/results/ (full precision), RUN/results/figures/*.png and RUN/release/
    (disclosure-controlled).
    """
    from rich.console import Console

    from ground.run_layout import RunLayout
    from models.run import run_models

    console = Console(stderr=True)
    with console.status("fitting models") as status:
        summary = run_models(layout=RunLayout.at(run), progress=lambda m: status.update(m))
    console.print(summary.to_markdown())
