"""``cohort run``: the whole pipeline as one Prefect flow, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    data: Annotated[Path, typer.Option("--data", help="Delivery folder (one extract per source).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder; rerunning resumes it.")],
    config: Annotated[Path | None, typer.Option("--config", help="Study config YAML.")] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Allow the built-in demo pseudonymisation key.")
    ] = False,
    secret_block: Annotated[
        str | None,
        typer.Option(
            "--secret-block",
            help="Prefect Secret block holding the pseudonymisation key (instead of the "
            "COHORT_PSEUDONYM_SECRET environment variable).",
        ),
    ] = None,
    settings: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            help="Run settings YAML: sections validation, linkage, build, model (see "
            "docs/operations.md); defaults when omitted.",
        ),
    ] = None,
    isolate_stages: Annotated[
        bool,
        typer.Option(
            "--isolate-stages/--in-process",
            help="Run each stage in its own child process (default: memory one stage leaves "
            "behind does not add to the next one's peak) or all in this process.",
        ),
    ] = True,
) -> None:
    """Validate, link, build the cohort, fit the models and write report.html.

    Stages already completed with the same inputs are skipped, so an interrupted run resumes.
    Writes RUN/manifest.json for `cohort reproduce`.
    """
    import logging
    import os

    from rich.console import Console

    from pipelines.orchestration.env import prefect_defaults

    prefect_defaults()
    from pipelines.linkage.pseudonym import secret_from_environment
    from pipelines.orchestration.flow import study_flow

    console = Console(stderr=True)
    from pipelines.orchestration.settings import load_run_settings
    from pipelines.orchestration.state import RunLock

    run_settings = load_run_settings(settings)  # a bad file fails here, before Prefect starts
    if not (secret_block or run_settings.linkage.prefect_secret_block):
        secret_from_environment(dict(os.environ), demo=demo)  # fail before any work if missing
    with RunLock(out):  # a second run on the same folder is refused here, before Prefect starts
        pass
    if demo and not os.environ.get("COHORT_PSEUDONYM_SECRET"):
        console.print(
            "[bold yellow]warning:[/] using the DEMO pseudonymisation key; never for real data"
        )

    class _StatusHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            status.update(record.getMessage())

    handler = _StatusHandler(level=logging.INFO)
    with console.status("starting Prefect (ephemeral mode)") as status:
        for name in ("pipelines", "models"):
            logging.getLogger(name).addHandler(handler)
        try:
            result = study_flow(
                str(data),
                str(out),
                str(config) if config else None,
                demo,
                secret_block,
                isolate_stages,
                str(settings) if settings else None,
            )
        finally:
            for name in ("pipelines", "models"):
                logging.getLogger(name).removeHandler(handler)
    console.print(f"stages run: {', '.join(result['ran']) or 'none (all complete)'}")
    console.print(f"report: {result['report']}")
    console.print(f"manifest: {result['manifest']}")
