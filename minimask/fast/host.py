"""Host (CPU) tuning for the NumPy engines: keep freed memory for reuse, split passes over threads.

Not part of the algorithm: the stage files run without it; the CLIs and benchmarks call
`keep_freed_host_memory`, and the Winograd engine splits its transforms with `split_map`.
Chapter: nbs/14_appendix_engines.ipynb
"""

from __future__ import annotations

import numpy as np

# --- host memory --------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameter numbers, from glibc's <malloc.h>


def keep_freed_host_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    By default every NumPy array over 128 KiB..32 MiB is mmap'ed fresh and unmapped when freed, so each
    step's temporaries (im2col columns, Winograd tiles, activations) are page-faulted and zeroed by the
    kernel again on every call. On the 2-core VMs this project is measured on that costs as much as
    the arithmetic for some convolutions (benchmarks/conv.py, Winograd 64->64 @128: 21 ms -> 9 ms).
    This turns mmap off for malloc (big blocks come from the heap) and never trims the heap: the
    process keeps its peak footprint, as the training loops want anyway (CuPy's memory pool does
    the same on the GPU). Returns True when it took effect; False (a no-op) off glibc Linux.
    `python -m minimask.train`/`evaluate`/`predict` and the benchmarks call it; a library user may.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


# --- host threads -----------------------------------------------------------------------------------------
_pool = None


def host_threads() -> int:
    """Threads for memory-bound NumPy passes (`split_map`): MINIMASK_NUM_THREADS, else the usable cores."""
    import os

    env = os.environ.get("MINIMASK_NUM_THREADS")
    if env:
        return max(1, int(env))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def split_map(fn, n, xp=np):
    """Call fn(i0, i1) on consecutive parts of range(n), in parallel threads on the CPU.

    BLAS already uses every core for the GEMMs; the additions around them (Winograd's transforms)
    run on one core in NumPy, which releases the GIL inside its loops, so splitting them over
    channels runs them on all cores (1.4-1.8x on 2 cores). fn must write disjoint outputs.
    CuPy: one call over the whole range (the GPU is already parallel).
    """
    parts = 1 if xp is not np else max(1, min(host_threads(), n))
    bounds = [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]
    if parts == 1:
        fn(0, n)
        return
    global _pool
    if _pool is None or _pool._max_workers < parts:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="minimask")
    for f in [_pool.submit(fn, i0, i1) for i0, i1 in bounds]:
        f.result()  # re-raises a worker's exception here
