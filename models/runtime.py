"""How the model stage's process runs its fits: one BLAS thread, no transparent huge pages.

**One BLAS thread.** The models' matrices are narrow (tens of columns): split over several BLAS
threads, each product costs more in hand-offs and spinning threads than it saves, and far more
on a shared machine. At 1,000,000 children (seed 1, load 8 on 2 cores) one KS4 analysis with
its 200 bootstrap replicates took 36 s wall and 33 CPU s on one BLAS thread against 70 s and
84 CPU s on two, with the same estimates; in the trials' entry model 0.3 s against 4 s at
20,000 children under load 6. One thread also makes the sums' order independent of the
machine's core count.

**No huge pages for numpy's arrays.** numpy asks the kernel for transparent huge pages on every
large array (``madvise(MADV_HUGEPAGE)``). Where the kernel then compacts memory to find them
(``/sys/kernel/mm/transparent_hugepage/defrag`` = ``madvise``, Debian's default), each new array
stalls in the kernel: at 1,000,000 children (seed 1, quiet 2-core machine) the time-to-event
analysis took 176 s, 104 s of it system time, against 88 s (38 s system) with ordinary pages,
same estimates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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


@contextmanager
def model_fitting() -> Iterator[None]:
    """Both: the process settings of the model stage's fits."""
    with one_blas_thread(), ordinary_pages():
        yield
