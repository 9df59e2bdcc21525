"""Benchmarks run on ``$REGRESS_THREADS`` torch threads (default 1), restored afterwards.

One thread: on a small shared machine a multi-threaded step is at the mercy of whichever
other process holds a core (a straggling thread stalls every matmul), and the ratios the
regression check compares become noise. ``REGRESS_THREADS=0`` keeps torch's default.
"""
import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _bench_threads():
    n = int(os.environ.get("REGRESS_THREADS", "1"))
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    yield
    torch.set_num_threads(old)
