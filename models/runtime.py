"""How the model stage's process runs its fits: one BLAS thread, no transparent huge pages.

**One BLAS thread.** The models' matrices are narrow (tens of columns): split over several BLAS
threads, each product costs more in hand-offs and spinning threads than it saves, and far more
on a shared machine. At 1,000,000 children (seed 1, load 8 on 2 cores) one KS4 analysis with
its 200 bootstrap replicates took 36 s wall and 33 CPU s on one BLAS thread against 70 s and
84 CPU s on two, with the same estimates; in the trials' entry model 0.3 s against 4 s at
20,000 children under load 6. One thread also makes the sums' order independent of the
machine's core count. The same holds for OpenMP (scikit-learn's gradient boosting in the
DR-learner): inside :func:`model_fitting` every thread pool has one thread.

**No huge pages for numpy's arrays.** numpy asks the kernel for transparent huge pages on every
large array (``madvise(MADV_HUGEPAGE)``). Where the kernel then compacts memory to find them
(``/sys/kernel/mm/transparent_hugepage/defrag`` = ``madvise``, Debian's default), each new array
stalls in the kernel: at 1,000,000 children (seed 1, quiet 2-core machine) the time-to-event
analysis took 176 s, 104 s of it system time, against 88 s (38 s system) with ordinary pages,
same estimates.

**Two processes (``ModelSettings.processes``, default 2).** The analyses are independent units
of work, single threaded: on 2 cores two forked processes can fit them side by side
(:func:`forked_map`), each with the cohort the parent loaded (copy-on-write, not copied).
Each worker returns its log records with its results, and the parent hands them to its own
loggers, so the stage's log reads as from one process.
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, TypeVar

from ground.processes import die_with_parent, log_here

T = TypeVar("T")
R = TypeVar("R")


def one_blas_thread() -> Any:
    """A context manager limiting every loaded BLAS library to one thread (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, "blas")


@contextmanager
def ordinary_pages() -> Iterator[None]:
    """numpy's arrays allocated inside get ordinary pages (no ``MADV_HUGEPAGE``); the setting
    is restored afterwards."""
    from numpy._core.multiarray import _set_madvise_hugepage  # type: ignore[attr-defined]

    before = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(before)


def one_thread() -> Any:
    """A context manager limiting every loaded thread pool (BLAS and OpenMP: scikit-learn's
    gradient boosting) to one thread (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


@contextmanager
def model_fitting() -> Iterator[None]:
    """The process settings of the model stage's fits: one thread in every thread pool (the
    processes, not threads, use the cores; the same sums on any machine) and ordinary pages."""
    with one_thread(), ordinary_pages():
        yield


# what the forked workers read: set by the parent just before it forks them
_SHARED: dict[str, Any] = {}


def shared(name: str) -> Any:
    """In a worker of :func:`forked_map`: the object the parent passed as ``shared[name]``."""
    return _SHARED[name]


class _Records(logging.handlers.QueueHandler):
    """Keeps a worker's log records (formatted, picklable) until its task's result is sent."""

    def __init__(self) -> None:
        self.kept: list[logging.LogRecord] = []
        super().__init__(self)  # type: ignore[arg-type]

    def put_nowait(self, record: logging.LogRecord) -> None:
        self.kept.append(record)


_RECORDS: list[_Records] = []


def _worker_start() -> None:
    die_with_parent()  # a killed stage process takes its workers with it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's terminate() ends the worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides on a Ctrl-C
    # the parent's handlers (a terminal, Prefect's API queue) belong to threads the fork did not
    # copy: every record goes to the parent instead, which hands it to its own loggers
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger):
            logger.handlers.clear()
    handler = _Records()
    logging.getLogger().handlers[:] = [handler]
    _RECORDS[:] = [handler]


def _run_task(
    task: tuple[int, Callable[[Any], Any], Any],
) -> tuple[int, Any, list[logging.LogRecord]]:
    i, fn, item = task
    _RECORDS[0].kept.clear()
    with model_fitting():
        result = fn(item)
    return i, result, list(_RECORDS[0].kept)


class WorkerDied(RuntimeError):
    """A worker of :func:`forked_map` ended without returning (killed, or crashed in native
    code); the message says which and what to do."""


def forked_map(
    fn: Callable[[T], R], items: Iterable[T], processes: int, **shared_objects: Any
) -> Iterator[tuple[int, R]]:
    """``(index, fn(item))`` for each of ``items``, in the order they finish, from
    ``processes`` forked workers that take the next item as each becomes free (so list the
    longest first). ``fn`` must be a module-level function; it finds ``shared_objects`` with
    :func:`shared`. Each item runs with :func:`model_fitting`'s settings; its log records are
    handed to this process's loggers as it finishes. An exception in ``fn`` is re-raised here
    and, like an interrupt, ends every worker at once; a worker that dies (a signal) raises
    :class:`WorkerDied` instead of leaving its item unanswered. Linux only (fork).

    Before forking, this process collects its garbage and freezes what is left
    (``gc.freeze``): the workers' garbage collector then never finalises an object they
    inherited. Without that a DuckDB connection left in a reference cycle by an earlier stage
    run in this process was freed by a worker's collector, in a process without the
    connection's threads: a segmentation fault (tests/test_model_speed.py)."""
    tasks = [(i, fn, item) for i, item in enumerate(items)]
    if not tasks:
        return
    _SHARED.clear()
    _SHARED.update(shared_objects)
    gc.collect()  # the inherited garbage is freed here, where its threads still run
    gc.freeze()  # and what the workers inherit is never theirs to collect
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(
        min(processes, len(tasks)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_start,
    )
    workers: set[Any] = set()
    finished = False
    try:
        futures = [pool.submit(_run_task, task) for task in tasks]
        workers = set(multiprocessing.active_children()) - before  # forked by the first submit
        try:
            for future in as_completed(futures):
                i, result, records = future.result()
                for record in records:
                    log_here(record)
                yield i, result
        except BrokenProcessPool as e:
            raise WorkerDied(_died(workers)) from e
        finished = True
    finally:
        if not finished:  # an error or an interrupt: nothing else is waited for
            for w in workers:
                w.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()
        _SHARED.clear()


def _died(workers: set[Any]) -> str:
    for w in workers:
        w.join(5)
    codes = sorted({-w.exitcode for w in workers if w.exitcode is not None and w.exitcode < 0})
    how = ", ".join(signal.Signals(c).name for c in codes) or "cause unknown"
    return (
        f"a model-fitting worker process died ({how}) before it returned its analyses; this "
        "stage kept no result. Rerun the stage; if it happens again, fit in one process "
        "(model settings: processes: 1) and report it."
    )
