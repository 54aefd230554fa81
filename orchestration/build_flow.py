"""Prefect flow of the cohort stage: sequencing only."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from cohort.build import CohortSummary, build_cohort
from cohort.config import load_study_config
from cohort.export import export_parquet
from ground.run_layout import RunLayout
from orchestration.isolation import call_stage
from orchestration.prefect_logs import project_logs_to_prefect, run_name


@task(name="build-cohort")
def build_task(
    run_dir: str, config_path: str | None, isolate: bool = False, memory_limit: str = "6GB"
) -> CohortSummary:
    with project_logs_to_prefect():
        return call_stage(
            build_cohort,
            isolate,
            layout=RunLayout.at(run_dir),
            config=load_study_config(config_path),
            memory_limit=memory_limit,
        )


@task(name="export-parquet")
def parquet_task(run_dir: str) -> None:
    """RUN/cohort/parquet/*.parquet: the cohort tables for Stata and R."""
    with project_logs_to_prefect():
        export_parquet(RunLayout.at(run_dir))


def attrition_artifact(summary: CohortSummary) -> str:
    """The attrition steps without their counts (Prefect's database is outside the secure
    environment): the counts are released with the rest of the run's tables, controlled
    together, in release/attrition.csv."""
    lines = ["| step | description |", "|---:|---|"]
    lines += [f"| {s} | {d} |" for s, d, _n, _x in summary.attrition]
    return "\n".join([*lines, "", "Counts (disclosure-controlled): release/attrition.csv."])


@flow(name="build", flow_run_name=run_name)
def build_flow(
    run_dir: str,
    config_path: str | None = None,
    isolate: bool = False,
    memory_limit: str = "6GB",
) -> dict[str, int]:
    """Derive the cohort tables; publish the attrition table as a markdown artifact.

    ``isolate`` runs the work in a child process (see :mod:`orchestration.isolation`)."""
    config = load_study_config(config_path)  # validate before any work starts
    del config
    with project_logs_to_prefect():
        summary = build_task(run_dir, config_path, isolate, memory_limit)
        parquet_task(run_dir)
        create_markdown_artifact(
            key="cohort-attrition", markdown=attrition_artifact(summary), description="attrition"
        )
    return summary.row_counts
