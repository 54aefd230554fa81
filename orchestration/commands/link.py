"""``cohort link``: link the staged records of a run into one pseudonymous person key."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestration.commands import settings_option

if TYPE_CHECKING:
    from linkage.settings import LinkageSettings


def command(
    run: Annotated[Path, typer.Option("--run", help="Run folder written by `cohort validate`.")],
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Reuse a trained Splink model JSON (no training)."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Match probability to link at (default: chosen from the trained model).",
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="Where Splink scores pairs: duckdb (default) or spark."),
    ] = None,
    spark_master: Annotated[
        str | None,
        typer.Option(
            "--spark-master",
            help="Spark master URL for --backend spark (local[2] by default, yarn, ...).",
        ),
    ] = None,
    settings_file: Annotated[Path | None, settings_option("linkage")] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Allow the built-in demo pseudonymisation key.")
    ] = False,
) -> None:
    """Link all sources: deterministic ids, then Splink; write the analysis zone.

    The pseudonymisation key comes from COHORT_PSEUDONYM_SECRET, or from the Prefect Secret
    block the settings' `linkage.prefect_secret_block` names (never stored).
    """
    import os

    from rich.console import Console

    from ground.run_layout import RunLayout
    from linkage import link_run
    from orchestration.state import key_check_value, write_marker

    settings = linkage_settings(settings_file, model, threshold, backend, spark_master)
    secret = _secret(settings.prefect_secret_block, demo)
    console = Console(stderr=True)
    if demo and not settings.prefect_secret_block and not os.environ.get("COHORT_PSEUDONYM_SECRET"):
        console.print(
            "[bold yellow]warning:[/] using the DEMO pseudonymisation key; never for real data"
        )
    with console.status("linking") as status:
        summary = link_run(
            layout=RunLayout.at(run),
            settings=settings,
            secret=secret,
            progress=lambda m: status.update(m),
        )
    # which secret made the keys (a key check value, not the secret): `cohort run` on this
    # folder refuses to resume with another one; no fingerprint, so `cohort run` relinks
    write_marker(
        Path(run),
        "link",
        {"stage": "link", "written_by": "cohort link", "key_check_value": key_check_value(secret)},
    )
    console.print(summary.to_markdown())


def linkage_settings(
    settings_file: Path | None,
    model: Path | None = None,
    threshold: float | None = None,
    backend: str | None = None,
    spark_master: str | None = None,
) -> LinkageSettings:
    """The `linkage:` section of the run settings, with the flags that were given over it."""
    from orchestration.settings import load_run_settings, with_flags

    return with_flags(
        load_run_settings(settings_file).linkage,
        {
            "model_path": ("--model", str(model) if model else None),
            "match_threshold": ("--threshold", threshold),
            "backend": ("--backend", backend),
            "spark_master": ("--spark-master", spark_master),
        },
    )


def _secret(block: str | None, demo: bool) -> bytes:
    """The key as `cohort run` finds it: the named Prefect Secret block (through the Prefect
    API: PREFECT_API_URL, else an ephemeral server for the look-up), else the environment."""
    import os

    from linkage import secret_from_environment

    if not block:
        return secret_from_environment(dict(os.environ), demo=demo)
    from orchestration.env import prefect_api, prefect_defaults
    from orchestration.secrets import secret_from_block

    prefect_defaults()
    with prefect_api():
        return secret_from_block(block)
