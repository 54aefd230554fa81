"""``cohort run``: the whole pipeline as one Prefect flow, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    data: Annotated[Path, typer.Option("--data", help="Delivery folder (one extract per source).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Run folder; rerunning with the same code, data and settings resumes it. "
            "'{date}' in the path becomes today's date.",
        ),
    ],
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
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Reuse a run folder made with other code, data or settings: stages whose "
            "inputs and outputs still match are kept, the rest rerun.",
        ),
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Empty the run folder first (it must be a run folder) and run anew."
        ),
    ] = False,
) -> None:
    """Validate, link, build the cohort, fit the models and write report.html.

    Stages already completed with the same inputs, whose outputs are still intact, are skipped,
    so an interrupted run resumes. A folder made with other code, data or settings needs
    --resume or --replace. Writes RUN/manifest.json for `cohort reproduce`.
    """
    import logging
    import os
    import time

    from rich.console import Console

    from orchestration.env import prefect_api, prefect_defaults

    prefect_defaults()
    from ground import PROJECT_PACKAGES
    from ground.errors import InputDataError, RunStateError
    from linkage.pseudonym import secret_from_environment
    from orchestration.manifest import run_stamp
    from orchestration.settings import load_run_settings
    from orchestration.state import (
        RunLock,
        check_key,
        check_out_folder,
        check_run_folder,
        expand_run_dir,
    )

    console = Console(stderr=True)
    if resume and replace:
        raise RunStateError("--resume and --replace contradict each other; choose one")
    out = Path(expand_run_dir(str(out)))
    # everything that can be checked before work is checked here, before Prefect starts
    run_settings = load_run_settings(settings)
    if not data.is_dir():
        raise InputDataError(f"--data {data} is not a folder; give the delivery folder")
    from deliveries.adapt import refuse_unadapted

    refuse_unadapted(data)  # a statutory-return layout: `cohort adapt` first
    check_out_folder(out)
    out.mkdir(parents=True, exist_ok=True)  # a read-only or full disk fails here, before work
    with RunLock(out):  # a second run on the same folder is refused here
        stamp = run_stamp(data, str(config) if config else None, run_settings)
        if not replace:
            check_run_folder(out, stamp, resume=resume)
    block = secret_block or run_settings.linkage.prefect_secret_block
    if not block:  # fail before any work if missing; a Secret block is read by the flow
        secret = secret_from_environment(dict(os.environ), demo=demo)
        if not replace:
            check_key(out, secret)
    if demo and not os.environ.get("COHORT_PSEUDONYM_SECRET"):
        console.print(
            "[bold yellow]warning:[/] using the DEMO pseudonymisation key; never for real data"
        )

    started = time.monotonic()

    class _StatusHandler(logging.Handler):
        """The spinner line: time since the run started and the latest step (stage lines
        carry their counter, e.g. "stage link [2/5]: running")."""

        def emit(self, record: logging.LogRecord) -> None:
            status.update(f"{time.monotonic() - started:5.0f} s  {record.getMessage()}")

    handler = _StatusHandler(level=logging.INFO)
    try:
        with prefect_api(), console.status("running the study") as status:
            from orchestration.study_flow import study_flow

            for name in PROJECT_PACKAGES:
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
                    resume=resume,
                    replace=replace,
                )
            finally:
                for name in PROJECT_PACKAGES:
                    logging.getLogger(name).removeHandler(handler)
    except OSError as exc:  # a full disk mid-run: one line naming the run folder if not a file
        from orchestration.isolation import with_path

        raise with_path(exc, out) from None
    console.print(f"stages run: {', '.join(result['ran']) or 'none (all complete)'}")
    console.print(f"report: {result['report']}")
    console.print(f"manifest: {result['manifest']}")
