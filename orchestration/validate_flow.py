"""Prefect flow of the validation stage: sequencing only."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from deliveries.report import report_adapted_checks
from ground.run_layout import RunLayout
from orchestration.isolation import call_stage
from orchestration.prefect_logs import project_logs_to_prefect, run_name
from validation import ValidationSettings, ValidationSummary, validate_delivery


@task(name="validate-delivery")
def validate_task(
    data_dir: str, run_dir: str, settings: ValidationSettings, isolate: bool = False
) -> ValidationSummary:
    with project_logs_to_prefect():
        return call_stage(
            validate_delivery,
            isolate,
            data_dir=Path(data_dir),
            layout=RunLayout.at(run_dir),
            settings=settings,
        )


def validation_artifact(summary: ValidationSummary) -> str:
    """What the Prefect artifact shows: no counts (Prefect's database is outside the secure
    environment); the disclosure-controlled counts are in report.html."""
    lines = ["| source | conserved | rows quarantined |", "|---|---|---|"]
    lines += [
        f"| {s} | {'yes' if r.conserved else 'NO'} | {'some' if r.rows_quarantined else 'none'} |"
        for s, r in summary.sources.items()
    ]
    return "\n".join([*lines, "", "Counts (disclosure-controlled): report.html."])


@flow(name="validate", flow_run_name=run_name)
def validate_flow(
    data_dir: str,
    run_dir: str,
    settings: ValidationSettings | None = None,
    isolate: bool = False,
) -> dict[str, int]:
    """Validate a delivery into the linkage zone; publish counts as a markdown artifact.

    ``isolate`` runs the work in a child process (see :mod:`orchestration.isolation`)."""
    with project_logs_to_prefect():
        summary = validate_task(data_dir, run_dir, settings or ValidationSettings(), isolate)
        # an adapted delivery (`cohort adapt`): quarantined rows traced to their source lines,
        # the DfE's SSDA903 rule failures beside validation's checks (RUN/validation/dq_report.md)
        report_adapted_checks(data_dir=Path(data_dir), layout=RunLayout.at(run_dir))
        create_markdown_artifact(
            key="validation-counts", markdown=validation_artifact(summary), description="sources"
        )
    return summary.row_counts
