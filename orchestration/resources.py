"""Peak resident memory while a block runs (for stage timings and benchmarks).

Measured over the process tree (this process plus every descendant alive at a sample), so a
stage run in a child process (see :mod:`orchestration.isolation`) is counted, and so
is the parent that waits for it. Two measures: the summed RSS, which counts a page shared by
forked processes once per process (the model stage's workers share the parent's cohort
frames), and the summed PSS (proportional set size: a shared page split among its sharers),
which is what the tree takes from the machine."""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from types import TracebackType


def _proc_bytes(path: str, field: str) -> int:
    """A ``field:  N kB`` line of a Linux /proc file, in bytes (0 where unavailable)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _rss_bytes(pid: int | str) -> int:
    """Resident set size of one process now."""
    return _proc_bytes(f"/proc/{pid}/status", "VmRSS:")


def _pss_bytes(pid: int | str) -> int:
    """Proportional set size of one process now (``smaps_rollup`` walks its page tables)."""
    return _proc_bytes(f"/proc/{pid}/smaps_rollup", "Pss:")


def _children(pid: int | str) -> list[str]:
    out: list[str] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += (task / "children").read_text().split()
    except OSError:
        pass
    return out


def _tree() -> list[str]:
    """This process and all its descendants now (Linux /proc)."""
    out, todo = [], [str(os.getpid())]
    seen: set[str] = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        todo += _children(p)
    return out


def tree_rss_bytes() -> int:
    """Resident set size of this process and all its descendants now (Linux /proc). Shared
    pages are counted once per process, so this can only overstate the true footprint."""
    return sum(_rss_bytes(p) for p in _tree())


def tree_pss_bytes() -> int:
    """Proportional set size of this process and all its descendants now: each shared page
    split among the processes sharing it, so forked workers are not counted twice."""
    return sum(_pss_bytes(p) for p in _tree())


class PeakMemory:
    """Context manager sampling the memory of this process tree: the summed RSS every
    ``interval`` seconds, the summed PSS every ``pss_interval`` seconds (reading
    ``smaps_rollup`` walks the page tables, so it is sampled less often).

    ``peak_gib`` is the largest RSS sample (and at least the RSS at entry and exit);
    ``peak_pss_gib`` the largest PSS sample. Sampling can miss a spike shorter than the
    interval; ``ru_maxrss`` bounds each process from above.
    """

    def __init__(self, interval: float = 0.1, pss_interval: float = 1.0) -> None:
        self.interval = interval
        self.pss_every = max(1, round(pss_interval / interval))
        self.peak_bytes = 0
        self.peak_pss_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval):
            tick += 1
            if tick % self.pss_every:
                self.peak_bytes = max(self.peak_bytes, tree_rss_bytes())
            else:
                self._both()

    def _both(self) -> None:
        """One sample of both measures, each process's pair read together (so a PSS peak
        always comes with an RSS sample at least as large)."""
        rss = pss = 0
        for p in _tree():
            rss += _rss_bytes(p)
            pss += _pss_bytes(p)
        self.peak_bytes = max(self.peak_bytes, rss)
        self.peak_pss_bytes = max(self.peak_pss_bytes, pss)

    def __enter__(self) -> PeakMemory:
        self._both()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._both()

    @property
    def peak_gib(self) -> float:
        return round(self.peak_bytes / 2**30, 2)

    @property
    def peak_pss_gib(self) -> float:
        return round(self.peak_pss_bytes / 2**30, 2)


def process_peak_gib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak RSS so far (``ru_maxrss``) of this process, or with ``RUSAGE_CHILDREN`` of the
    largest finished child process."""
    return round(resource.getrusage(who).ru_maxrss / 2**20, 2)


def release_memory() -> None:
    """Return freed heap memory to the operating system between stages (glibc's malloc_trim).

    Python and the libraries it loads keep freed memory for reuse; after a stage that held
    large frames (validation's Great Expectations batches) that would add to the next stage's
    peak. A no-op where glibc is absent."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
