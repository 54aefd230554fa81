"""Prefect flow of the linkage stage: sequencing only."""

from __future__ import annotations

import os

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from ground.run_layout import RunLayout
from linkage.pipeline import LinkageSummary, link_run
from linkage.settings import LinkageSettings
from orchestration.isolation import call_stage
from orchestration.prefect_logs import project_logs_to_prefect, run_name
from orchestration.secrets import resolve_secret


def _secret(settings: LinkageSettings, demo: bool) -> bytes:
    return resolve_secret(settings.prefect_secret_block, dict(os.environ), demo=demo)


@task(name="link-records")
def link_task(
    run_dir: str, settings: LinkageSettings, secret: bytes, isolate: bool = False
) -> LinkageSummary:
    with project_logs_to_prefect():
        return call_stage(
            link_run, isolate, layout=RunLayout.at(run_dir), settings=settings, secret=secret
        )


# no counts or rates in the artifact (Prefect's database is outside the secure environment):
# the disclosure-controlled link rates are in report.html
LINKAGE_ARTIFACT = "Linkage finished. Link rates (disclosure-controlled): report.html."


@flow(name="link", flow_run_name=run_name)
def link_flow(
    run_dir: str,
    settings: LinkageSettings | None = None,
    demo: bool = False,
    isolate: bool = False,
) -> dict[str, int]:
    """Link the staged records of a run; publish link rates as a markdown artifact.

    ``isolate`` runs the work in a child process (see :mod:`orchestration.isolation`)."""
    settings = settings or LinkageSettings()
    with project_logs_to_prefect():
        summary = link_task(run_dir, settings, _secret(settings, demo), isolate)
        create_markdown_artifact(
            key="linkage-rates", markdown=LINKAGE_ARTIFACT, description="linkage finished"
        )
    return summary.row_counts
