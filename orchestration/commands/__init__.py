"""One module per ``cohort`` command; each exposes ``command``."""

from __future__ import annotations

from typing import Any

import typer


def settings_option(section: str) -> Any:
    """The ``--settings`` option every stage command shares: the run-settings YAML that
    ``cohort run --settings`` takes (:mod:`orchestration.settings`), of which the command uses
    its own section."""
    return typer.Option(
        "--settings",
        help=f"Run settings YAML (the file `cohort run --settings` takes); this command uses its "
        f"`{section}:` section, flags override it; defaults when omitted (docs/operations.md).",
    )
