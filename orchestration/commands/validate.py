"""``cohort validate``: validate a delivery into the linkage zone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    data: Annotated[
        Path, typer.Option("--data", help="Delivery folder with one extract per source.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder (created if missing).")],
    settings_file: Annotated[
        Path | None, typer.Option("--settings", help="YAML with table-check severities.")
    ] = None,
) -> None:
    """Validate every extract against its contract; stage valid rows, quarantine the rest.

    Writes RUN/linkage_zone.duckdb (staging.*, quarantine.*, validation.summary) and
    RUN/validation/ (dq_report.json/.md, Great Expectations Data Docs).
    """
    from rich.console import Console

    from ground.run_layout import RunLayout
    from validation import ValidationSettings, validate_delivery

    console = Console(stderr=True)
    settings = (
        ValidationSettings.from_yaml(settings_file) if settings_file else ValidationSettings()
    )
    with console.status("validating") as status:
        summary = validate_delivery(
            data_dir=data,
            layout=RunLayout.at(out),
            settings=settings,
            progress=lambda msg: status.update(msg),
        )
    console.print(summary.to_markdown())
    console.print(f"report: {RunLayout.at(out).validation_dir / 'dq_report.md'}")
