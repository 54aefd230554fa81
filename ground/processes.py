"""Child processes that cannot outlive the process that started them."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no-op elsewhere); exit now if
    the parent is already gone. Call it first thing in a child process: a killed run then
    leaves no orphan holding the run's files or memory."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(pr_set_pdeathsig, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl took effect
        os._exit(1)


def log_here(record: logging.LogRecord) -> None:
    """Hand a log record made in a child process to this process's logger of the same name,
    if that logger takes its level: the child's log then reads as this process's."""
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
