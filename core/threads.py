"""One thread setting for every numeric library a worker process uses.

``torch.set_num_threads`` does not reach numpy's BLAS (OpenBLAS here), which threads even a
one-row matrix product and keeps its threads spinning afterwards: on 2 shared cores a scorer
measured 1.9 cores of CPU for 1.0 of work. :func:`limit_threads` sets both.

>>> limit_threads(1)
>>> import torch
>>> torch.get_num_threads()
1
"""

from __future__ import annotations

import torch
from threadpoolctl import threadpool_limits


def limit_threads(threads: int) -> None:
    """At most ``threads`` threads for torch's intra-op pool and for every BLAS/OpenMP pool."""
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # applied now, for the life of the process (not a context here)
