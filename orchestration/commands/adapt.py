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
        list[str] | None,
        typer.Option(
            "--layout",
            help="A shipped layout (ssda903, hes_apc, wales_lac, wales_crcs, ecds, school_census, "
            "key_stages) or a layout YAML; "
            "repeat it (or give a comma list) for a delivery holding several; default: the "
            "layouts delivery.json declares, else the shipped layouts whose files are in "
            "--source.",
        ),
    ] = None,
) -> None:
    """Adapt a delivery in statutory-return layouts (e.g. SSDA903 + CIN census XML, and HES APC
    spells) into the contract extracts `cohort validate` reads; each written row points back to
    its source file and line (OUT/adapted/)."""
    from rich.console import Console

    from deliveries import adapt_delivery, declared_layouts, detect_layouts, load_layouts
    from ground.errors import ConfigError

    if not source.is_dir():
        raise ConfigError(f"--source {source}: not a folder")
    names = (
        layout
        or [n for n in declared_layouts(source) if n != "prelinked"]
        or detect_layouts(source)
    )
    if not names:
        raise ConfigError(
            f"--source {source}: no shipped layout's files found there; name one with --layout"
        )
    summary = adapt_delivery(source_dir=source, out_dir=out, layout=load_layouts(names))
    Console(stderr=True).print(summary.to_markdown(), highlight=False)
