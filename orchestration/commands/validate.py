"""``cohort validate``: validate a delivery into the linkage zone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestration.commands import settings_option


def command(
    data: Annotated[
        Path, typer.Option("--data", help="Delivery folder with one extract per source.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder (created if missing).")],
    settings_file: Annotated[Path | None, settings_option("validation")] = None,
) -> None:
    """Validate every extract against its contract; stage valid rows, quarantine the rest.

    Writes RUN/linkage_zone.duckdb (staging.*, quarantine.*, validation.summary) and
    RUN/validation/ (dq_report.json/.md, Great Expectations Data Docs).
    """
    from rich.console import Console

    from ground.run_layout import RunLayout
    from orchestration.settings import load_run_settings
    from validation import validate_delivery

    settings = load_run_settings(settings_file).validation
    from deliveries.adapt import refuse_unadapted

    refuse_unadapted(data)  # a statutory-return layout: `cohort adapt` first
    console = Console(stderr=True)
    with console.status("validating") as status:
        summary = validate_delivery(
            data_dir=data,
            layout=RunLayout.at(out),
            settings=settings,
            progress=lambda msg: status.update(msg),
        )
    from deliveries.report import report_adapted_checks

    report_adapted_checks(data_dir=data, layout=RunLayout.at(out))  # an adapted delivery only
    console.print(summary.to_markdown())
    console.print(f"report: {RunLayout.at(out).validation_dir / 'dq_report.md'}")
