"""``cohort evaluate``: linkage quality against a synthetic truth folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run: Annotated[Path, typer.Option("--run", help="Run folder after `cohort link`.")],
    truth: Annotated[Path, typer.Option("--truth", help="The synthetic world's truth/ folder.")],
) -> None:
    """Print pairwise precision, recall and F1 (overall, by subgroup, deterministic-only) as JSON.

    Synthetic data only: the pipeline itself never reads the truth.
    """
    import json

    from evaluation.linkage_truth import evaluate_linkage
    from ground.run_layout import RunLayout

    typer.echo(json.dumps(evaluate_linkage(layout=RunLayout.at(run), truth_dir=truth), indent=2))
