"""Where a number came from (a leaf module): repository, commit, library versions, machine.

One home for each of these facts; the harness, the tasks, the report and the regression suite
all read them from here.
"""
from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]


def git_commit(repo: Path = REPO) -> Dict[str, object]:
    """``{"commit": sha or "unknown", "dirty": bool}`` of the checkout: dirty when a tracked file outside
    ``results/`` differs from the commit (a run writing into a committed results folder is not a code change)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": False}
    return {"commit": sha or "unknown", "dirty": bool(dirty) if sha else False}


def commit_label(info: Optional[Dict[str, object]] = None) -> str:
    """``sha`` or ``sha-dirty``: the short form used in tables and provenance lines."""
    info = info or git_commit()
    return f"{info['commit']}{'-dirty' if info.get('dirty') else ''}"


def versions() -> Dict[str, Optional[str]]:
    """Python and the libraries a number depends on (installed versions; nothing heavy imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for key, dist in (("torch", "torch"), ("pyro", "pyro-ppl"), ("torchvision", "torchvision"),
                      ("numpy", "numpy")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    return out


def canonical_name(name: str) -> str:
    """A distribution's name as PEP 503 compares them (``Jinja2`` = ``jinja2``, ``typing_extensions`` =
    ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions() -> Dict[str, str]:
    """Every installed distribution (canonical name) and its version, sorted by name."""
    from importlib.metadata import distributions as dists

    found = {}
    for d in dists():
        name = d.metadata["Name"]
        if name:
            found[canonical_name(name)] = d.version
    return dict(sorted(found.items()))


def lock_pins(text: str) -> Dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a pip lock file (hash lines skipped)."""
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\\\s;]+)", line.strip())
        if m:
            pins[canonical_name(m.group(1))] = m.group(2)
    return pins


def lock_mismatches(lock_text: str, installed: Optional[Dict[str, str]] = None) -> List[str]:
    """One line per locked distribution whose installed version differs from the lock (or is absent)."""
    installed = distributions() if installed is None else installed
    out = []
    for name, want in sorted(lock_pins(lock_text).items()):
        have = installed.get(name)
        if have != want:
            out.append(f"{name}: locked {want}, installed {have or 'nothing'}")
    return out


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def host() -> str:
    return platform.node()


def identity(device: str, threads: int, data_sha256: Dict[str, str],
             git: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Everything a result depends on besides its config: what every record and env.json carries.

    ``git``: the commit the code was loaded from, read when the task started (a long task must not
    take the commit the checkout has moved to while it ran); read now when not given."""
    return {"git": git if git is not None else git_commit(), "distributions": distributions(), "python": platform.python_version(),
            "data_sha256": dict(sorted(data_sha256.items())), "threads": threads, "host": host(),
            "cpu": cpu_name(), "device": device, "device_name": device_name(device),
            "platform": platform.platform()}


#: what env.json keeps of each command that wrote to a folder (its ``earlier_runs``, and its own top level)
PART_KEYS = ("git_commit", "date", "command", "torch", "pyro", "device_name", "threads", "tasks_run")


def run_parts(env: dict) -> List[dict]:
    """Every command that made a folder, oldest first: env.json's ``earlier_runs`` and the last command."""
    return [*(env.get("earlier_runs") or []), {k: env.get(k) for k in PART_KEYS}]


def tasks_by(env: dict, key: str) -> Dict[str, int]:
    """Per value of ``key`` (a :data:`PART_KEYS` field: the machine, the commit, torch), how many of the folder's
    tasks were last run by a command with that value (a task a later command reran counts once, for the later),
    in the order of those last runs; commands that ran no task are left out."""
    last: Dict[str, str] = {}
    for part in run_parts(env):
        for task in part.get("tasks_run") or []:
            last.pop(str(task), None)  # re-inserted: the order is the order of the last runs
            last[str(task)] = str(part.get(key) or "?")
    counts: Dict[str, int] = {}
    for value in last.values():
        counts[value] = counts.get(value, 0) + 1
    return counts


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (never os.cpu_count())."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def cpu_times() -> Optional[Tuple[float, float]]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its children), now.

    The machine's from the first line of /proc/stat (user, nice, system, irq, softirq; idle, iowait and
    steal are not work of this machine's processes); None where it cannot be read. Two snapshots
    around a task give :func:`other_cpu_load`.
    """
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    if len(ticks) < 7:
        return None
    busy = (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]) / hz
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return busy, own


def other_cpu_load(start, end, seconds: float) -> Optional[float]:
    """Cores kept busy by everything but this process between two :func:`cpu_times` snapshots, on
    average over ``seconds``: 0 for a task that ran alone, about 1 beside one single-threaded task."""
    if start is None or end is None or seconds <= 0:
        return None
    other = (end[0] - start[0]) - (end[1] - start[1])
    return round(max(other, 0.0) / seconds, 2)


def _cgroup_quota() -> Optional[float]:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 ``cfs_quota_us/cfs_period_us``); None if unlimited."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return float(text[0]) / float(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


#: CPU flags that change which kernels torch runs (the rest of /proc/cpuinfo's flags go into the hash only)
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def _cpuinfo_fields() -> Dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo (empty off Linux)."""
    out: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    if out:
                        break
                    continue
                key, _, value = line.partition(":")
                out.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return out


def _cache_sizes() -> Dict[str, str]:
    """``{"L1d": "48K", "L1i": "64K", "L2": "2048K", "L3": "491520K"}`` from sysfs (cpu0)."""
    out: Dict[str, str] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        out[f"L{level}{suffix}"] = size
    return out


def _torch_build() -> Dict[str, object]:
    """The torch build facts that decide CPU kernels: capability (AVX2/AVX512...), MKL, oneDNN, OpenMP."""
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
            "openmp": torch.backends.openmp.is_available()}


@lru_cache(maxsize=1)
def machine_fingerprint() -> Dict[str, object]:
    """What makes step times comparable between two runs, even where the CPU name is masked.

    Cloud CPUs often report ``Intel(R) Xeon(R) Processor`` for several generations, so the
    name alone lumps machines together. The fingerprint adds the vendor, family/model/stepping
    numbers, the kernel-relevant CPU flags (and a hash of all flags), the cache sizes, the
    usable core count and the torch build (CPU capability, MKL, oneDNN, OpenMP) -- not the
    library versions, which a comparison reports separately. ``name`` is a readable slug of
    the CPU name and cores plus a 6-hex hash of the rest, e.g. ``intel-xeon-2cpu-1a2b3c``.
    """
    import hashlib
    import json
    import re

    info = _cpuinfo_fields()
    flags = sorted(set((info.get("flags") or info.get("Features") or "").split()))
    fp: Dict[str, object] = {
        "cpu_name": cpu_name(),
        "vendor": info.get("vendor_id") or info.get("CPU implementer") or platform.machine(),
        "family_model_stepping": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags],
        "flags_sha1": hashlib.sha1(" ".join(flags).encode()).hexdigest()[:12],
        "caches": _cache_sizes(),
        "usable_cpus": usable_cpus(),
        "arch": platform.machine(),
        "torch_build": _torch_build(),
    }
    digest = hashlib.sha1(json.dumps({k: v for k, v in fp.items() if k != "cpu_name"}, sort_keys=True)
                          .encode()).hexdigest()[:6]
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*", "",
                                             fp["cpu_name"].lower())).strip("-")
    fp["name"] = f"{slug or 'unknown'}-{fp['usable_cpus']}cpu-{digest}"
    return fp
def main(argv: Optional[List[str]] = None) -> int:
    """``python -m bench.core.provenance --check-lock requirements.lock``: exit 1 when the venv differs."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.core.provenance")
    p.add_argument("--check-lock", required=True, metavar="LOCK")
    args = p.parse_args(argv)
    text = Path(args.check_lock).read_text()
    bad = lock_mismatches(text)
    for line in bad:
        print(f"lock: {line}", file=sys.stderr)
    if bad:
        print(f"lock: {len(bad)} distribution(s) differ from {args.check_lock}: run `make install`", file=sys.stderr)
        return 1
    print(f"lock: the {len(lock_pins(text))} distributions of {args.check_lock} are installed at their locked versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
