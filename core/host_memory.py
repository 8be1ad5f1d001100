"""Keep freed host memory in the process for the next iteration instead of handing it back to the OS.

glibc serves allocations above a threshold (128 KiB at first) with mmap and unmaps them on free, and
trims the top of the heap above another. A CPU training step allocates and frees the same few hundred
tensors of 0.1-10 MiB every iteration, so without this they come back as fresh pages each time: about
1000 page faults (and as many zeroed pages) per iteration of the 2D study. Raising both thresholds lets
the heap keep those blocks for reuse; the peak is unchanged, since what is kept is what the step needs.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
KEPT_BELOW_BYTES = 1 << 30  # blocks below this stay in the heap when freed


def keep_freed_memory(threshold_bytes: int = KEPT_BELOW_BYTES) -> bool:
    """Serve blocks below `threshold_bytes` from the heap and never trim it below that; process-wide.
    Returns whether it applied (False where the C library has no glibc `mallopt`)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter itself links
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, threshold_bytes) == 1
