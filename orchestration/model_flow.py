"""Prefect flow of the model stage: sequencing only."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from ground.run_layout import RunLayout
from models.run import ModelSummary, run_models
from models.settings import ModelSettings
from orchestration.isolation import call_stage
from orchestration.prefect_logs import project_logs_to_prefect, run_name


@task(name="fit-models")
def model_task(run_dir: str, settings: ModelSettings, isolate: bool = False) -> ModelSummary:
    with project_logs_to_prefect():
        return call_stage(run_models, isolate, layout=RunLayout.at(run_dir), settings=settings)


@flow(name="model", flow_run_name=run_name)
def model_flow(
    run_dir: str, settings: ModelSettings | None = None, isolate: bool = False
) -> dict[str, int]:
    """Fit the analyses the run's study config declares (``RUN/cohort/study_config.yaml``);
    publish the headline estimates (released, no personal rows) as an artifact.

    ``isolate`` runs the work in a child process (see :mod:`orchestration.isolation`)."""
    with project_logs_to_prefect():
        summary = model_task(run_dir, settings or ModelSettings(), isolate)
        create_markdown_artifact(
            key="main-estimates", markdown=summary.to_markdown(), description="main estimates"
        )
    return summary.row_counts
