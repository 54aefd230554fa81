"""``cohort link-uncertainty``: linkage-aware intervals by multiple linkage imputation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run: Annotated[Path, typer.Option("--run", help="Run folder after `cohort model`.")],
    draws: Annotated[
        int, typer.Option("--draws", min=2, help="Link sets to draw (each reruns build + model).")
    ] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the link draws.")] = 2012,
    bootstrap_replicates: Annotated[
        int | None,
        typer.Option(
            "--bootstrap-replicates",
            min=0,
            help="Bootstrap replicates of IPW/AIPW in each draw (default: the run's setting; "
            "0 gives analytic intervals, far cheaper per draw).",
        ),
    ] = None,
    analyses: Annotated[
        str | None,
        typer.Option(
            "--analyses",
            help="Comma-separated names of the run's analyses to fit in each draw (default: "
            "every analysis the run declares); e.g. time_to_event,ks4_cla_vs_nla for the main "
            "estimates, a fraction of the model stage's time per draw.",
        ),
    ] = None,
    keep_draws: Annotated[
        bool, typer.Option("--keep-draws", help="Keep RUN/link_draws/ (pseudonymous zones).")
    ] = False,
    uncalibrated: Annotated[
        bool,
        typer.Option(
            "--uncalibrated",
            help="Draw from Splink's own probabilities when no review labels exist (they are "
            "over-confident on these data: the draws link too much; docs/linkage_error.md). "
            "Without it, no labels is an error saying how to get them.",
        ),
    ] = False,
    review_sample: Annotated[
        int | None,
        typer.Option(
            "--review-sample",
            min=1,
            help="Instead of drawing: store N candidate pairs for clerical review in the "
            "linkage zone (linkage.link_review_sample; reviewers fill is_match there), spread "
            "over the calibration's strata; the next run without it calibrates on the labels.",
        ),
    ] = None,
) -> None:
    """Draw link sets from the run's scored pairs, rerun build and model per draw, pool with
    Rubin's rules: RUN/results/linkage_uncertainty.csv beside the main estimates, with the
    share of each estimate's variance due to linkage (docs/linkage_error.md).

    The pairs are not scored again; only the stages after linkage run per draw. A draw's
    person keys are random numbers from the seed (never joined to the run's own keys). The run must have
    been linked with candidate pairs: run settings `linkage: {candidate_floor: 0.001}` (off by
    default; docs/linkage_error.md)."""
    from rich.console import Console

    from ground.run_layout import RunLayout
    from orchestration.link_uncertainty import (
        REVIEW_TABLE,
        run_link_uncertainty,
        run_settings_of,
        write_review_sample,
    )

    console = Console(stderr=True)
    if review_sample is not None:
        n = write_review_sample(run, pairs=review_sample, seed=seed)
        typer.echo(
            f"{n} candidate pairs stored for review in the linkage zone ({REVIEW_TABLE}); "
            "fill is_match there, then run `cohort link-uncertainty` without --review-sample."
        )
        return
    model_settings = None
    if bootstrap_replicates is not None:
        _, ms = run_settings_of(RunLayout.at(run))
        model_settings = ms.model_copy(update={"bootstrap_replicates": bootstrap_replicates})
    summary = run_link_uncertainty(
        run_dir=run,
        draws=draws,
        seed=seed,
        model_settings=model_settings,
        keep_draws=keep_draws,
        progress=lambda m: console.print(m),
        analyses=None if analyses is None else [a.strip() for a in analyses.split(",")],
        uncalibrated=uncalibrated,
    )
    typer.echo(summary.to_markdown())
