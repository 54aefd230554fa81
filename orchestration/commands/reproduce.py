"""``cohort reproduce``: rerun a run from its manifest and compare every output."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run: Annotated[Path, typer.Argument(help="A finished run folder with manifest.json.")],
    out: Annotated[Path, typer.Option("--out", help="New run folder for the rerun.")],
    demo: Annotated[
        bool, typer.Option("--demo", help="Allow the built-in demo pseudonymisation key.")
    ] = False,
) -> None:
    """Rerun RUN from its manifest into OUT and report which outputs are byte-identical.

    Exits 0 when every output is identical, 1 otherwise.
    """
    from rich.console import Console
    from rich.table import Table

    from orchestration.env import prefect_api, prefect_defaults

    prefect_defaults()
    console = Console()
    with prefect_api():
        from orchestration.reproduce import reproduce

        report = reproduce(Path(run), Path(out), demo=demo)
    table = Table(title=f"outputs of {out} vs {run}")
    table.add_column("output")
    table.add_column("status")
    for name, status in sorted(report["outputs"].items()):
        table.add_row(name, status)
    console.print(table)
    for w in report["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    if not report["identical"]:
        raise typer.Exit(1)
    console.print("all outputs byte-identical")
