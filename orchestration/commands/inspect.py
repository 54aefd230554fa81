"""``cohort inspect``: which layouts a delivery folder is in, and what they leave uncovered."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    data: Annotated[Path, typer.Option("--data", help="The delivery folder.")],
) -> None:
    """Name the layouts detected in a delivery folder (statutory-return layouts such as ssda903
    or wales_lac + wales_crcs, several at once, or the native contract extracts), where each
    contract's extract comes from, which contract columns a layout's mapping leaves empty, and
    any two layouts that would make the same contract."""
    from rich.console import Console

    from deliveries.adapt import inspect_delivery

    Console(stderr=True).print(inspect_delivery(data), highlight=False)
