"""The ``cohort`` command line. Each command lives in ``orchestration/commands/<name>.py``.

Command modules keep heavy imports (Great Expectations, Splink, Prefect, lifelines) inside the
command function so that ``cohort --help`` starts quickly.

Every command runs with umask 077 (run folders 0700, files 0600: they hold identifiers). A user
error (:class:`~ground.errors.CohortError`) or a filesystem fault (permission denied,
read-only or full disk) is printed as one line ``error: ...`` with exit code 2; Ctrl-C and
SIGTERM stop the command (its stage process and Prefect server with it) with one line and exit
code 130 / 143. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from ground.errors import CohortError

app = typer.Typer(
    help="Linked longitudinal cohort study of children looked after (CLA) vs children in need "
    "who were not looked after (NLA): synthesise, validate, link, build, model, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def version_text() -> str:
    """``cohort <package version>``, with the git commit when run from a git checkout (and
    whether the project's code has uncommitted changes)."""
    from importlib import metadata

    from orchestration.manifest import code_version

    try:
        version = metadata.version("cla-cohort")
    except metadata.PackageNotFoundError:
        version = "unknown"
    code = code_version()
    if code["git_commit"] == "unknown":
        return f"cohort {version}"
    dirty = ", uncommitted changes" if code["dirty"] else ""
    return f"cohort {version} (commit {code['git_commit'][:12]}{dirty})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version (and the git commit of a checkout) and exit.",
        ),
    ] = False,
) -> None:
    """Linked cohort study pipeline."""


# Order shown in --help follows the data flow.
COMMANDS = [
    "synth",
    "validate",
    "link",
    "evaluate",
    "build",
    "model",
    "link_uncertainty",
    "run",
    "reproduce",
]
COMMANDS[1:1] = ["inspect", "adapt"]  # a delivery in a return layout, before validate

for _name in COMMANDS:
    try:
        _module = importlib.import_module(f"orchestration.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command not yet built in this checkout
        if exc.name != f"orchestration.commands.{_name}":
            raise
        continue
    app.command(_name.replace("_", "-"))(_module.command)


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM. A ``BaseException`` like ``KeyboardInterrupt``, so ``except
    Exception`` does not swallow it and every layer unwinds (Prefect records the flow run as
    crashed, the stage process is stopped, the Prefect server is stopped), but not a
    ``KeyboardInterrupt``, which the command-line framework would turn into "Aborted!" and
    exit code 1."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _on_signal(signum: int, frame: object) -> None:
    # later signals must not interrupt the cleanup this one starts
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


_WHAT_TO_DO = {
    errno.ENOSPC: "free space there (or use a folder on another disk) and rerun the same command",
    errno.EDQUOT: "free space there (or use a folder on another disk) and rerun the same command",
    errno.EROFS: "the file system is read-only; choose a folder you can write to",
    errno.EACCES: "you may not write there; choose a folder you can write to or fix its "
    "permissions",
    errno.EPERM: "you may not write there; choose a folder you can write to or fix its permissions",
}


def describe_os_error(exc: OSError) -> str:
    """One line: what failed, where, what to do."""
    from orchestration.isolation import operational_os_error

    code = exc.errno
    if code is None:  # e.g. a Rust library's "No space left on device (os error 28)"
        code = getattr(operational_os_error(Exception(str(exc))), "errno", None)
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc)
    todo = _WHAT_TO_DO.get(code or 0, "check the path and rerun the same command")
    return f"{reason}{where}; {todo}"


def _exit_now(code: int) -> NoReturn:
    """Exit at once after an interruption. By now the stage process and the Prefect server are
    stopped and the run folder is in a resumable state; tearing down the interpreter (gigabytes
    of imported libraries and their thread pools) would only delay the exit by several seconds.
    Objects holding OS resources (the stage's queues and their semaphores) are collected first,
    and the output streams and logs are flushed."""
    import gc

    sys.exc_info()[1].__traceback__ = None  # type: ignore[union-attr]  # frees the stage frames
    gc.collect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    """Entry point: user errors and filesystem faults become a one-line message and exit code 2,
    an interruption one line and 130 (Ctrl-C) or 143 (SIGTERM); no traceback."""
    os.umask(0o077)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "prefect", "httpx", "splink"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console = Console(stderr=True, soft_wrap=True)  # one line, however long
    try:
        app()
    except CohortError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        console.print("interrupted; rerun the same command to resume", highlight=False)
        _exit_now(128 + signum)
    except Exception as exc:
        from orchestration.isolation import operational_os_error

        os_error = operational_os_error(exc)
        if os_error is None:
            raise
        console.print(f"[bold red]error:[/] {describe_os_error(os_error)}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
