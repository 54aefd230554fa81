"""``freed_memory_kept``: while a world is generated, the C heap keeps the memory numpy frees.

The generator allocates and frees arrays of 1 to 100 MB many times over: at 1M children it
faulted in 2.3 million pages (about 9 GB, twice its peak memory). By default glibc returns a
freed block to the kernel at once when it lies at the top of its heap or is larger than the
(adaptive, 128 KB to 32 MB) mmap threshold, so the next array is faulted in and zeroed again.
On a virtual machine that hands free memory back to its host (free page reporting, as on the
machine the benchmarks run on) a page left free for a second or two must also be fetched back
from the host: about 2-5 s of system time per GiB re-touched, measured on a fresh 1 GiB array.
At 1M children system time was as large as user time (39 s each).

Inside the context glibc keeps freed heap memory for reuse (``M_TRIM_THRESHOLD``) and serves
every block under 32 MB (glibc's largest threshold; a million-row array of 8-byte numbers is
8 MB) from its heap; larger blocks are still mapped on their own and returned when freed.
Keeping those too (``M_MMAP_MAX`` 0) saved another 6 s of system time at 1M but raised the
peak from 4.5 to 5.5 GiB (blocks kept in the heap cannot be split for other sizes), too close
to the 6 GiB target. On leaving, glibc's defaults are restored and the kept memory is handed
back (``malloc_trim``). Output does not depend on any of this; the figures are in
docs/benchmarks.md (generator section).

Only the C heap (numpy) is affected; polars has its own allocator. Elsewhere than glibc
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
# glibc's documented defaults, restored on leaving (mallopt has no "get")
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_THRESHOLD = 128 * 1024
KEEP_ALL = 2**31 - 1  # mallopt takes a C int: never trim
LARGEST_HEAP_BLOCK = 32 * 1024 * 1024  # the largest mmap threshold glibc accepts (64-bit)


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
        libc.mallopt(M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
