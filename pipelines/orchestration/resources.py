"""Peak resident memory of this process while a block runs (for stage timings and benchmarks)."""

from __future__ import annotations

import resource
import threading
from pathlib import Path
from types import TracebackType


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Context manager sampling this process's RSS every ``interval`` seconds.

    ``peak_gib`` is the largest sample (and at least the RSS at entry and exit). Sampling can
    miss a spike shorter than the interval; ``ru_maxrss`` bounds the whole process from above.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    def __enter__(self) -> PeakMemory:
        self.peak_bytes = current_rss_bytes()
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
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    @property
    def peak_gib(self) -> float:
        return round(self.peak_bytes / 2**30, 2)


def process_peak_gib() -> float:
    """Peak RSS of this whole process so far (``ru_maxrss``)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


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
