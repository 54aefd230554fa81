"""``cohort adapt``: turn a delivery in a statutory-return layout into contract extracts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    source: Annotated[
        Path, typer.Option("--source", help="The delivery folder, in the layout's own files.")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="A new folder for the contract extracts (`cohort validate`)."),
    ],
    layout: Annotated[
        str | None,
        typer.Option(
            "--layout",
            help="A shipped layout (ssda903) or a layout YAML; default: the shipped layout "
            "whose files are in --source.",
        ),
    ] = None,
) -> None:
    """Adapt a delivery in a statutory-return layout (e.g. SSDA903 + CIN census XML) into the
    contract extracts `cohort validate` reads; each written row points back to its source file
    and line (OUT/adapted/)."""
    from rich.console import Console

    from deliveries import adapt_delivery, detect_layout, load_layout
    from ground.errors import ConfigError

    if not source.is_dir():
        raise ConfigError(f"--source {source}: not a folder")
    name = layout or detect_layout(source)
    if name is None:
        raise ConfigError(
            f"--source {source}: no shipped layout's files found there; name one with --layout"
        )
    summary = adapt_delivery(source_dir=source, out_dir=out, layout=load_layout(name))
    Console(stderr=True).print(summary.to_markdown(), highlight=False)
