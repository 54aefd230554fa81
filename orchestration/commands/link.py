"""``cohort link``: link the staged records of a run into one pseudonymous person key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
        str,
        typer.Option("--backend", help="Where Splink scores pairs: duckdb (default) or spark."),
    ] = "duckdb",
    spark_master: Annotated[
        str,
        typer.Option(
            "--spark-master", help="Spark master URL for --backend spark (local[2], yarn, ...)."
        ),
    ] = "local[2]",
    demo: Annotated[
        bool, typer.Option("--demo", help="Allow the built-in demo pseudonymisation key.")
    ] = False,
) -> None:
    """Link all sources: deterministic ids, then Splink; write the analysis zone.

    The pseudonymisation key comes from COHORT_PSEUDONYM_SECRET (never stored).
    """
    import os

    from rich.console import Console

    from ground.run_layout import RunLayout
    from linkage import LinkageSettings, link_run, secret_from_environment

    console = Console(stderr=True)
    secret = secret_from_environment(dict(os.environ), demo=demo)
    if demo and not os.environ.get("COHORT_PSEUDONYM_SECRET"):
        console.print(
            "[bold yellow]warning:[/] using the DEMO pseudonymisation key; never for real data"
        )
    from ground.errors import ConfigError

    if backend not in ("duckdb", "spark"):
        raise ConfigError(f"--backend {backend!r}: allowed values are duckdb, spark")
    settings = LinkageSettings(
        match_threshold=threshold,
        model_path=str(model) if model else None,
        backend=backend,  # type: ignore[arg-type]
        spark_master=spark_master,
    )
    from orchestration.state import key_check_value, write_marker

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
