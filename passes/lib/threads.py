"""One intra-op thread while a pass computes what it stores: the same key, the same bytes.

torch's CPU kernels split a tensor among its intra-op threads; where a split falls decides
which elements a vectorized kernel computes and which its scalar tail loop does, and the two
need not round alike (a transcendental such as the rotary table's cos and sin, a reduction's
order). The split follows the thread count, which follows the machine (one thread per core by
default), OMP_NUM_THREADS and, with OMP_DYNAMIC, the load average. On one thread nothing is
split: the numbers depend on the inputs alone.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

THREADS = 1


@contextlib.contextmanager
def pinned() -> Iterator[None]:
    """torch's intra-op threads set to THREADS inside, and restored after (an error too)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)
