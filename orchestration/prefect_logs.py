"""The project's own log lines in each Prefect flow run's and task run's logs, under disclosure
control.

Prefect records only its own loggers' lines in a run's logs; the project logs under the names of
its packages (:data:`ground.PROJECT_PACKAGES`), so a subflow showed only "Beginning subflow".
Each flow and task body of :mod:`orchestration` runs inside :func:`project_logs_to_prefect`, which
sends the project loggers' lines to the innermost run open at the time.

Why not Prefect's ``PREFECT_LOGGING_EXTRA_LOGGERS`` (the documented way to attach Prefect's API
handler to other loggers): Prefect's database is outside the secure environment, and that
setting sends every line as written. Here each line first passes :func:`disclosure_safe`
(whole numbers become ``#``); it also sets an attached logger's level to Prefect's logging
level, which the command line sets to CRITICAL (the CLI reports errors itself), silencing the
project's own lines in the terminal. Lines that a stage's child process logs (see
:mod:`orchestration.isolation`) arrive in another thread, outside Prefect's run context: they
go to the run that was innermost when they arrived.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from ground import PROJECT_PACKAGES

# what stays when counts are scrubbed: a stage counter "[2/5]", a duration "42 s" / "1.5 s"
_KEEP = re.compile(r"\[\d+/\d+\]|\b\d+(?:\.\d+)? s\b")
# a whole number not part of a word, a decimal or a percentage (a count, or as good as one)
_WHOLE_NUMBER = re.compile(r"(?<![\w.])\d+(?![\w.%])")


def disclosure_safe(message: str) -> str:
    """``message`` with every whole number replaced by ``#`` (a count of records, pairs or
    children might be small), except stage counters ``[2/5]`` and durations ``42 s``; decimals
    and percentages stay (thresholds, shares of large totals)."""
    out, last = [], 0
    for kept in _KEEP.finditer(message):
        out.append(_WHOLE_NUMBER.sub("#", message[last : kept.start()]))
        out.append(kept.group(0))
        last = kept.end()
    out.append(_WHOLE_NUMBER.sub("#", message[last:]))
    return "".join(out)


def _api_handler_class() -> type[logging.Handler]:
    from prefect.logging.handlers import APILogHandler

    return APILogHandler


class _RunLogs:
    """One Prefect API log handler on the project loggers while at least one run is open; a
    stack of the open runs (flow run id, task run id or None), innermost last."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[UUID, UUID | None]] = []
        self.handler: logging.Handler | None = None
        self.levels: dict[str, int] = {}

    def current(self) -> tuple[UUID, UUID | None] | None:
        with self.lock:
            return self.runs[-1] if self.runs else None

    def push(self, run: tuple[UUID, UUID | None]) -> None:
        with self.lock:
            self.runs.append(run)
            if self.handler is not None:
                return
            self.handler = _make_handler()
            for name in PROJECT_PACKAGES:
                logger = logging.getLogger(name)
                self.levels[name] = logger.level
                if logger.getEffectiveLevel() > logging.INFO:  # e.g. a worker's root: WARNING
                    logger.setLevel(logging.INFO)
                logger.addHandler(self.handler)

    def pop(self, run: tuple[UUID, UUID | None]) -> None:
        with self.lock:
            if run in self.runs:
                self.runs.reverse()
                self.runs.remove(run)  # the innermost copy
                self.runs.reverse()
            if self.runs or self.handler is None:
                return
            for name in PROJECT_PACKAGES:
                logger = logging.getLogger(name)
                logger.removeHandler(self.handler)
                logger.setLevel(self.levels.get(name, logging.NOTSET))
            self.handler.flush()
            self.handler = None


_RUN_LOGS = _RunLogs()


def _make_handler() -> logging.Handler:
    base = _api_handler_class()

    class ProjectLogHandler(base):  # type: ignore[misc, valid-type]
        """Prefect's API log handler for the project loggers: each line disclosure-safe and
        tied to the innermost open run."""

        def prepare(self, record: logging.LogRecord) -> dict[str, Any]:
            safe = copy.copy(record)  # the terminal's handlers see the line as written
            safe.msg = disclosure_safe(record.getMessage())
            safe.args = ()
            safe.exc_info = None  # a traceback may quote data; the state message has the error
            safe.exc_text = None
            run = _RUN_LOGS.current()
            if run is not None and not getattr(record, "flow_run_id", None):
                safe.flow_run_id, safe.task_run_id = run
            return dict(super().prepare(safe))

        def emit(self, record: logging.LogRecord) -> None:
            # A line from another thread (a stage's child process, relayed) has Prefect's root
            # settings, which predate the command's own server: Prefect would start a second,
            # ephemeral server for it, which nothing stops on Ctrl-C. Send it to the command's
            # server, or not at all.
            from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

            if get_current_settings().api.url:
                super().emit(record)
                return
            url = os.environ.get("PREFECT_API_URL")
            if url:
                with temporary_settings(updates={PREFECT_API_URL: url}):
                    super().emit(record)

    return ProjectLogHandler(level=logging.INFO)


def _open_run() -> tuple[UUID, UUID | None] | None:
    from prefect.context import FlowRunContext, TaskRunContext

    task = TaskRunContext.get()
    if task is not None:
        return (task.task_run.flow_run_id, task.task_run.id)  # type: ignore[return-value]
    flow = FlowRunContext.get()
    if flow is not None and flow.flow_run is not None:
        return (flow.flow_run.id, None)
    return None


@contextlib.contextmanager
def project_logs_to_prefect() -> Iterator[None]:
    """Inside a flow or task body: the project loggers' lines (INFO and above, disclosure-safe)
    go to this run's logs until the block ends. Outside a Prefect run: does nothing."""
    run = _open_run()
    if run is None:
        yield
        return
    _RUN_LOGS.push(run)
    try:
        yield
    finally:
        _RUN_LOGS.pop(run)


def run_name() -> str:
    """A flow run's name: the flow, the delivery (the data folder's name, through a ``latest``
    link to the folder it points at) or else the run folder's name, and today's date, e.g.
    ``cohort-study 2026-11-delivery 2026-12-02`` (Prefect's default is two random words)."""
    from datetime import date
    from pathlib import Path

    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    folder = params.get("data_dir") or params.get("run_dir") or ""
    where = Path(str(folder)).resolve().name if folder else "run"
    return f"{flow_run.flow_name} {where} {date.today().isoformat()}"
