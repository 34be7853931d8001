"""Keep glibc from handing freed tensor memory back to the kernel between solver iterations.

Process-wide tuning, so it belongs to whatever starts the process (the ``mdeq`` command), not to the
model. A CPU training step allocates and frees the same few-MB tensors hundreds of times (each f
evaluation, VJP and Broyden update makes (B, D) temporaries). With glibc's defaults, blocks that size
are mmap'ed and unmapped again (or the heap top is trimmed), so every new tensor arrives as fresh
pages the kernel must fault in and zero. Raising the mmap threshold to its maximum and the trim
threshold far above the working set makes freed blocks stay in the heap for reuse; the figures are
in docs/training.md and docs/benchmarks.md. This is what jemalloc/tcmalloc preloading buys PyTorch
CPU jobs, without a preload.

Only host (CPU) memory is affected; tensors on a GPU come from torch's own caching allocator.
``MDEQ_HOST_ALLOCATOR=default`` leaves glibc's settings alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed heap top instead of returning it
TOP_PAD = 64 << 20  # grow the heap in 64 MiB steps rather than one sbrk per large tensor

_applied: bool | None = None


def tune_host_allocator() -> bool:
    """Apply the settings above once per process; True if glibc accepted them.

    A no-op (False) off Linux/glibc, when a preloaded allocator replaced malloc (mallopt then has
    nothing to tune but is harmless), or with ``MDEQ_HOST_ALLOCATOR=default``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    setting = os.environ.get("MDEQ_HOST_ALLOCATOR", "tuned").strip().lower()
    if setting == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc (musl has no mallopt to tune)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the threshold first, since it also fixes glibc's dynamic one
    _applied = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    return _applied
