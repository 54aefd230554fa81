"""One BLAS thread for the model stage's fits.

The models' matrices are narrow (tens of columns): split over several BLAS threads, each
product costs more in hand-offs and spinning threads than it saves, and far more on a shared
machine. At 1,000,000 children (seed 1, load 8 on 2 cores) one KS4 analysis with its 200
bootstrap replicates took 36 s wall and 33 CPU s on one BLAS thread against 70 s and 84 CPU s
on two, with the same estimates; in the trials' entry model 0.3 s against 4 s at 20,000
children under load 6. One thread also makes the sums' order independent of the machine's
core count.
"""

from __future__ import annotations

from typing import Any


def one_blas_thread() -> Any:
    """A context manager limiting every loaded BLAS library to one thread (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, "blas")
