"""``cohort inspect``: which layout a delivery folder is in, and what it leaves uncovered."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    data: Annotated[Path, typer.Option("--data", help="The delivery folder.")],
) -> None:
    """Name the layout detected in a delivery folder (a statutory-return layout such as ssda903,
    or the native contract extracts), where each contract's extract comes from, and which
    contract columns the layout's mapping leaves empty."""
    from rich.console import Console

    from deliveries.adapt import inspect_delivery

    Console(stderr=True).print(inspect_delivery(data), highlight=False)
