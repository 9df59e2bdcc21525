"""Peak memory of one step: resident-set growth on CPU, the caching allocator's peak on CUDA.

CPU (Linux): ``malloc_trim(0)`` first, so that memory freed by earlier steps goes back to
the OS (glibc otherwise keeps the heap at the previous step's peak and the growth of every
step after the first reads ~0); then a thread samples the resident set size
(``/proc/self/statm``) every ``interval`` seconds while the step runs, with Python's thread
switch interval lowered so that it gets the GIL; the result is max(RSS during the step) -
RSS just before it, in MiB: the step's activations, gradients and temporaries, to the
sampling's resolution. Elsewhere: the growth of ``ru_maxrss`` (a high-water mark, so only a
step that exceeds every earlier peak shows), flagged by ``method``.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
memory allocated before the step (what the step adds to the allocator's peak).

Imports only the standard library and torch: ``bench.regress.runner`` loads it by path in
the environment of each side of an A/B.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
import threading
import time
from typing import Callable, Dict, Optional

MIB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = "/proc/self/statm"


def _libc():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.malloc_trim  # glibc only
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def rss_bytes() -> Optional[int]:
    """The resident set size now (Linux), else None."""
    try:
        with open(_STATM) as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def peak_step_memory(step: Callable[[], object], device: str = "cpu", interval: float = 2e-4) -> Dict[str, object]:
    """Run ``step`` once and return ``{"peak_mb": MiB, "method": how it was measured}``."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return {"peak_mb": (torch.cuda.max_memory_allocated(device) - before) / MIB,
                "method": "cuda max_memory_allocated"}
    if rss_bytes() is None:
        before = _maxrss_bytes()
        step()
        return {"peak_mb": (_maxrss_bytes() - before) / MIB, "method": "ru_maxrss growth"}
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    before = rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            r = rss_bytes()
            if r > peak[0]:
                peak[0] = r
            time.sleep(interval)

    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        step()
    finally:
        r = rss_bytes()
        done.set()
        thread.join()
        sys.setswitchinterval(old_switch)
    peak[0] = max(peak[0], r)
    return {"peak_mb": (peak[0] - before) / MIB,
            "method": "RSS sampling" + (" after malloc_trim" if _LIBC is not None else "")}
