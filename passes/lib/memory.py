"""Large allocations handed back to the system when freed, so streaming one tensor at a time keeps the RSS flat.

glibc serves blocks under its mmap threshold from the heap, and raises that threshold (up to
32 MB) each time a mapped block is freed; freed heap blocks stay in the process. Streaming
makes and drops thousands of layer-sized tensors, so without this the RSS climbs towards the
whole model. A fixed threshold maps every block from 1 MiB up on its own and unmaps it on free.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
THRESHOLD = 1 << 20


@functools.cache
def unmap_large_blocks() -> bool:
    """Once per process; False where the C library is not glibc (nothing to do)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError, TypeError):
        return False
