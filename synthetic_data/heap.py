"""``freed_memory_kept``: while a world is generated, the C heap keeps the memory numpy frees.

The generator allocates and frees arrays of 1 to 200 MB many times over: at 1M children it
faulted in about 34 GB (8.9 million 4 KiB pages, counted with transparent huge pages off),
seven times its peak memory. By default glibc returns a freed block to the kernel at once when
it lies at the top of its heap or is larger than the (adaptive, 128 KB to 32 MB) mmap
threshold, so the next array is faulted in and zeroed again. On a virtual machine that hands
free memory back to its host (free page reporting, as on the machine the benchmarks run on) a
page left free for a second or two must also be fetched back from the host: about 2-5 s of
system time per GiB, measured on a fresh 1 GiB array. At 1M children system time was as large
as user time (39 s each).

Inside the context glibc keeps freed heap memory for reuse (``M_TRIM_THRESHOLD``) and serves
every block under 32 MB (glibc's largest threshold; a million-row array of 8-byte numbers is
8 MB) from its heap; larger blocks are still mapped on their own and returned when freed.
Keeping those too (``M_MMAP_MAX`` 0) saved another 6 s of system time at 1M but raised the
peak from 4.5 to 5.5 GiB (blocks kept in the heap cannot be split for other sizes), too close
to the 6 GiB target. On leaving, the kept memory is handed back (``malloc_trim``) and freed
memory is returned again above 64 MB at the top of the heap: glibc's adaptive thresholds
cannot be switched back on once set, so they are left where a large workload takes them
anyway (mmap 32 MB, trim twice that), not at the 128 KB they start from. Output does not
depend on any of this; the figures are in docs/benchmarks.md (generator section).

Only the C heap (numpy) is affected; polars has its own allocator (jemalloc), which
`cohort synth` tells to keep freed pages before polars loads
(``orchestration/commands/synth.py``, ``keep_polars_freed_memory``). Elsewhere than glibc
(macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_ALL = 2**31 - 1  # mallopt takes a C int: never trim
LARGEST_HEAP_BLOCK = 32 * 1024 * 1024  # the largest mmap threshold glibc accepts (64-bit)
TRIM_AFTER = 2 * LARGEST_HEAP_BLOCK  # glibc's adaptive trim threshold at that mmap threshold


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None


@contextmanager
def freed_memory_kept() -> Iterator[None]:
    """Keep freed C-heap memory in the process for reuse while the block runs (glibc only)."""
    libc = _glibc()
    if libc is None:
        yield
        return
    ok = libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL) == 1
    ok = libc.mallopt(M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK) == 1 and ok
    if not ok:  # an old or unusual glibc: output is the same, only slower
        log.debug("mallopt refused; freed memory is returned as usual")
    try:
        yield
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_AFTER)
        libc.malloc_trim(0)
