"""Run one stage's plain function in a fresh child process, so its memory goes when it ends.

A long Python process keeps what a stage allocated (allocator arenas, DuckDB's buffer pool,
library caches) even after the stage's objects are gone; at national size that residue added
about 3 GiB to the next stage's peak. ``cohort run`` therefore runs each stage's function in a
child started with ``spawn`` (a clean interpreter, no copied parent heap):

* the child's log records are sent back and handled by the parent's loggers (Prefect's run
  logs and the CLI status line see them as before);
* a user error (:class:`~ground.errors.CohortError`) is re-raised in the parent as the same
  class with the same message; any other exception becomes :class:`StageProcessError` carrying
  the child's traceback;
* a filesystem error (:class:`OSError`: permission denied, disk full, also when DuckDB or
  Arrow report it in their own exception types) is re-raised in the parent as an ``OSError``
  with its errno and path, so the CLI reports it in one line;
* the child is killed if the parent dies (Linux ``PR_SET_PDEATHSIG``), so a killed run leaves no
  orphan holding the run's DuckDB files, and the resume logic sees the same state as in-process;
* the child ignores a terminal's Ctrl-C (SIGINT); the parent decides: when it is interrupted it
  sends the child SIGTERM, which the child turns into ``KeyboardInterrupt`` so the stage's own
  cleanup runs (identifier scratch files, half-built tables), and SIGKILL after 5 s.

Arguments and the result are pickled across a pipe (settings, a :class:`RunLayout`, the
pseudonymisation key as bytes: never written to disk or logs).
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import multiprocessing
import pickle
import re
import signal
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from ground import PROJECT_PACKAGES
from ground.errors import CohortError
from ground.processes import die_with_parent, log_here

T = TypeVar("T")

log = logging.getLogger(__name__)


class StageProcessError(RuntimeError):
    """A stage failed with an internal error (not bad input) in its child process."""


_OS_MESSAGES = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
}


def operational_os_error(exc: BaseException) -> OSError | None:
    """``exc`` as an :class:`OSError` when it is a filesystem fault (an ``OSError``, or a
    library's own I/O error whose message names one, e.g. DuckDB's "No space left on device");
    None otherwise."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    for message, code in _OS_MESSAGES.items():
        if message in text:
            quoted = re.search(r'"(/[^"]+)"', text)  # DuckDB quotes the file it could not write
            return OSError(code, f"{message} ({type(exc).__name__})", quoted and quoted[1])
    return None


def with_path(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` when it names no file itself (e.g. a Rust library's
    "No space left on device (os error 28)")."""
    if exc.filename:
        return exc
    reason = exc.strerror or str(exc)
    code = exc.errno or getattr(operational_os_error(Exception(reason)), "errno", None)
    return OSError(code, reason, str(path)) if code else OSError(f"{reason} ({path})")


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling and is a user error; a filesystem fault as
    an ``OSError``; otherwise a :class:`StageProcessError` holding the formatted traceback."""
    os_error = operational_os_error(exc)
    if os_error is not None:  # rebuilt from its parts: always picklable, same subclass
        if os_error.errno is None:
            return OSError(str(os_error))
        return OSError(os_error.errno, os_error.strerror, os_error.filename)
    if isinstance(exc, CohortError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:  # fall through to the generic wrapper
            return CohortError(str(exc))
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return StageProcessError(f"{type(exc).__name__}: {exc}\n\nin the stage process:\n{text}")


def _child_main(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    conn: Connection,
    log_conn: Connection,
    level: int,
) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides (see the module doc)
    signal.signal(signal.SIGTERM, _interrupted)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(_PipeQueue(log_conn))]  # type: ignore[arg-type]
    root.setLevel(level)
    try:
        outcome: tuple[str, Any] = ("ok", fn(**kwargs))
    except BaseException as exc:  # every failure goes back to the parent
        outcome = ("error", _portable(exc))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the work is over: a SIGTERM now just ends it
    try:
        conn.send(outcome)
    except Exception as exc:  # an unpicklable result is an internal error
        conn.send(("error", _portable(exc)))
    finally:
        conn.close()


def _interrupted(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # once: a second SIGTERM ends the process
    raise KeyboardInterrupt(f"stopped by signal {signum}")


class _PipeQueue:
    """The sending end of a pipe as the queue a :class:`logging.handlers.QueueHandler` puts
    records on (one record at a time, whichever thread logs)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def put_nowait(self, record: logging.LogRecord) -> None:
        with self._lock:
            self._conn.send(record)


def _forward_logs(conn: Connection) -> None:
    """In the parent: hand each record from the child to the parent's loggers until EOF."""
    handler = _ToParentLoggers()
    while True:
        try:
            record = conn.recv()
        except (EOFError, OSError):
            return
        handler.handle(record)


class _ToParentLoggers(logging.Handler):
    """Hand each record from the child to the parent's logger of the same name."""

    def emit(self, record: logging.LogRecord) -> None:
        log_here(record)


def run_in_child_process(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """``fn(**kwargs)`` in a fresh ``spawn`` child; its result, or its exception re-raised.

    ``fn`` must be importable by name (a module-level function) and its arguments and result
    picklable."""
    ctx = multiprocessing.get_context("spawn")
    # log records come back over a pipe, not a multiprocessing.Queue: a queue's semaphores
    # outlive a stage process stopped mid-write and are reported as leaked at exit
    log_receive, log_send = ctx.Pipe(duplex=False)
    forwarder = threading.Thread(target=_forward_logs, args=(log_receive,), daemon=True)
    receive, send = ctx.Pipe(duplex=False)
    level = logging.getLogger().getEffectiveLevel()
    for name in PROJECT_PACKAGES:  # the project loggers may be more verbose than root
        level = min(level, logging.getLogger(name).getEffectiveLevel())
    child = ctx.Process(
        target=_child_main,
        args=(fn, kwargs, send, log_send, level),
        name=f"cohort-stage-{getattr(fn, '__name__', 'fn')}",
    )
    try:
        child.start()
        log_send.close()
        forwarder.start()
        send.close()  # the parent keeps only the receiving end: EOF when the child dies
        # wait in short slices: a Ctrl-C that the kernel hands to another thread of this
        # process only sets a flag, which the main thread acts on when it next wakes
        while not receive.poll(0.2):
            pass
        try:
            status, payload = receive.recv()
        except EOFError:
            child.join()
            raise StageProcessError(
                f"the stage process for {getattr(fn, '__name__', fn)} exited with code "
                f"{child.exitcode} before returning (killed, e.g. out of memory?); "
                "rerun the same command to resume from the last completed stage"
            ) from None
        child.join()
    finally:
        if child.is_alive():  # the parent is being interrupted: take the child with it
            child.terminate()  # SIGTERM: the stage cleans up
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
        if forwarder.is_alive():
            forwarder.join(2)  # the child is gone: its log pipe reaches EOF
        receive.close()
        log_receive.close()
    if status == "ok":
        return payload  # type: ignore[no-any-return]
    raise payload


def call_stage(fn: Callable[..., T], isolate: bool, /, **kwargs: Any) -> T:
    """``fn(**kwargs)``: in a child process when ``isolate``, else in this process."""
    if isolate:
        return run_in_child_process(fn, **kwargs)
    return fn(**kwargs)
