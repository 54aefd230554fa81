"""The ``cohort`` command line. Each command lives in ``pipelines/commands/<name>.py``.

Command modules keep heavy imports (Great Expectations, Splink, Prefect, lifelines) inside the
command function so that ``cohort --help`` starts quickly.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer
from rich.console import Console

from pipelines.errors import CohortError

app = typer.Typer(
    help="Linked longitudinal cohort study of children looked after (CLA) vs children in need "
    "who were not looked after (NLA): synthesise, validate, link, build, model, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Linked cohort study pipeline."""


# Order shown in --help follows the data flow.
COMMANDS = ["synth", "validate", "link", "evaluate", "build", "model", "run", "reproduce"]

for _name in COMMANDS:
    try:
        _module = importlib.import_module(f"pipelines.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command not yet built in this checkout
        if exc.name != f"pipelines.commands.{_name}":
            raise
        continue
    app.command(_name)(_module.command)


def main() -> None:
    """Entry point: user errors become a one-line message and a non-zero exit, no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "prefect", "httpx", "splink"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except CohortError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
