"""``cohort synth``: generate a synthetic world with a known truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    children: Annotated[
        int, typer.Option("--children", help="Number of children (>= 100).")
    ] = 20000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same bytes.")] = 42,
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario", help="Shipped scenario (default, null_effect, messy) or a YAML file."
        ),
    ] = "default",
    out: Annotated[
        Path, typer.Option("--out", help="Output folder for the extracts and truth/.")
    ] = Path("data/demo"),
    file_format: Annotated[
        str, typer.Option("--format", help="Extract file format: csv or parquet.")
    ] = "csv",
) -> None:
    """Generate a synthetic world: seven messy source extracts plus a truth folder.

    The truth folder (OUT/truth/) holds record-to-person maps, latent variables, injected
    defects and the true causal effects; the pipeline never reads it.
    """
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from synthetic_data import generate_world

    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("synth", total=None)
        summary = generate_world(
            n_children=children,
            seed=seed,
            scenario=scenario,
            out_dir=out,
            file_format=file_format,  # type: ignore[arg-type]
            progress=lambda msg: bar.update(task, description=msg),
        )
    console.print(summary.to_markdown())
    console.print(f"extracts in {out}/, truth in {out}/truth/ (never read by the pipeline)")
