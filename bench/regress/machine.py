"""The machine and the libraries a stored baseline was measured with, and whether it fits this one.

``<machine>`` is the fingerprint name of ``bench.core.provenance.machine_fingerprint`` (CPU name, cores and a
hash of flags, caches and torch build, e.g. ``intel-xeon-2cpu-c3c94d``), else, for baselines saved before
fingerprints, the CPU-name slug (``amd-epyc-2cpu``). A baseline judges only where it fits (:func:`unfit`):
its fingerprint is this machine's and its torch, Pyro and Python (major.minor) versions are the running ones.
The check itself is ``bench.regress.baseline``'s.
"""
from __future__ import annotations

import os
import platform
import re
from typing import List

from ..core.provenance import cpu_name, machine_fingerprint, versions


def cpu_model() -> str:
    return cpu_name()


def machine_info() -> dict:
    import torch

    now = versions()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": now["python"],
        "torch": now["torch"],
        "pyro": now["pyro"],
        "torch_threads_default": torch.get_num_threads(),
        "benchmark_threads": int(os.environ.get("REGRESS_THREADS", "1")),
        "fingerprint": fingerprint(),
    }


def fingerprint() -> dict:
    return machine_fingerprint()


def machine_name() -> str:
    """``$REGRESS_MACHINE``, else the fingerprint name (e.g. ``intel-xeon-2cpu-c3c94d``)."""
    return os.environ.get("REGRESS_MACHINE") or fingerprint()["name"]


def legacy_machine_name() -> str:
    """The CPU-name slug and core count of baselines saved before fingerprints (``amd-epyc-2cpu``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)|cpu|processor", "", cpu_model().lower())).strip("-")
    return f"{slug or 'unknown'}-{os.cpu_count()}cpu"


def _public(version: str) -> str:
    """A version without its local label: baselines saved before 2026-11-26 stored ``torch.__version__``
    (``2.14.1+cu130``), the check reads the installed distribution's (``2.14.1``), as ``machine_info`` now does."""
    return version.split("+", 1)[0]


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


#: the libraries a baseline's ratios depend on, and the part of each version that must match
LIBRARIES = (("torch", _public), ("pyro", _public), ("python", _minor))


def unfit(baseline: dict) -> List[str]:
    """Why a stored baseline may not judge this machine and these libraries (empty: it may)."""
    out = []
    stored = baseline.get("machine", {})
    fp_old, fp_new = stored.get("fingerprint"), fingerprint()
    if fp_old is None:
        out.append(f"saved before machine fingerprints (matched by CPU name only: {stored.get('cpu_model', '?')!r}, "
                   f"{stored.get('cpu_count', '?')} cores, which masked cloud CPUs share)")
    elif fp_old.get("name") != fp_new["name"]:
        diff = [k for k in fp_new if k != "name" and fp_old.get(k) != fp_new.get(k)]
        out.append(f"fingerprint {fp_old.get('name')} differs from this machine's {fp_new['name']} "
                   f"({', '.join(diff) or 'name'})")
    now = versions()
    for lib, part in LIBRARIES:
        if not stored.get(lib):
            out.append(f"saved without its {lib} version")
        elif part(str(stored[lib])) != part(str(now.get(lib))):
            out.append(f"saved with {lib} {stored[lib]}, this environment has {now.get(lib)}")
    return out
