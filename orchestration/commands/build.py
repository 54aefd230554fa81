"""``cohort build``: derive the cohort tables from the analysis zone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestration.commands import settings_option


def command(
    run: Annotated[Path, typer.Option("--run", help="Run folder after `cohort link`.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="Study config YAML (default: the shipped one).")
    ] = None,
    settings_file: Annotated[Path | None, settings_option("build")] = None,
) -> None:
    """Build cohort.children, cohort.person_time, cohort.school_years and cohort.attrition
    (also as RUN/cohort/parquet/*.parquet, for Stata and R).

    The config is validated before any work starts; the effective config is saved to
    RUN/cohort/study_config.yaml.
    """
    from rich.console import Console

    from cohort import build_cohort, load_study_config
    from cohort.export import export_parquet
    from ground.run_layout import RunLayout
    from orchestration.settings import load_run_settings

    settings = load_run_settings(settings_file).build
    cfg = load_study_config(config)
    console = Console(stderr=True)
    with console.status("building the cohort"):
        summary = build_cohort(
            layout=RunLayout.at(run), config=cfg, memory_limit=settings.duckdb_memory_limit
        )
        export_parquet(RunLayout.at(run))
    console.print(summary.to_markdown())
