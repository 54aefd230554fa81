"""Prefect flow of the validation stage: sequencing only."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from pipelines.orchestration.isolation import call_stage
from pipelines.run_layout import RunLayout
from pipelines.validation.core import ValidationSettings, ValidationSummary, validate_delivery


@task(name="validate-delivery")
def validate_task(
    data_dir: str, run_dir: str, settings: ValidationSettings, isolate: bool = False
) -> ValidationSummary:
    return call_stage(
        validate_delivery,
        isolate,
        data_dir=Path(data_dir),
        layout=RunLayout.at(run_dir),
        settings=settings,
    )


@flow(name="validate")
def validate_flow(
    data_dir: str,
    run_dir: str,
    settings: ValidationSettings | None = None,
    isolate: bool = False,
) -> dict[str, int]:
    """Validate a delivery into the linkage zone; publish counts as a markdown artifact.

    ``isolate`` runs the work in a child process (see :mod:`pipelines.orchestration.isolation`)."""
    summary = validate_task(data_dir, run_dir, settings or ValidationSettings(), isolate)
    create_markdown_artifact(
        key="validation-counts", markdown=summary.to_markdown(), description="rows per source"
    )
    return summary.row_counts
