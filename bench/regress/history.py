"""History of step times per machine, as asv keeps it: one record per regress run, drawn over commits.

Every ``regress run`` and ``regress ab`` writes one JSON record to
``<history dir>/<machine>/<UTC time>-<commit>-<kind>.json`` (``<history dir>``: ``--history-dir``,
else ``$SSVAE_HISTORY_DIR``, else ``results/history`` in the working tree; ``<machine>``: the
fingerprint name of ``bench.core.provenance.machine_fingerprint``): the commit, the date, the
fingerprint, the library versions, the median milliseconds per case (``ESTIMATOR:KIND`` /
``ref:KIND``), the ratios and the peak memory. An A/B of two commits gives a point to each (the
base's medians at the base's commit, the head's at the head's); an A/B of two environments at one
commit is kept, labelled by its versions, and drawn only in the table.

Beside each record, ``<same name>.pytest-benchmark.json`` holds the same run in the format
``pytest --benchmark-json`` writes (``machine_info``, ``commit_info``, ``benchmarks`` with
``stats`` in seconds, ``datetime``, ``version``): for ``regress run`` the suite's own file, for
``regress ab`` side B's rounds, one benchmark per case. ``pytest-benchmark compare`` reads them
(``pytest-benchmark --storage <history dir> compare '<machine>/*-ab.pytest-benchmark'``).

``python -m bench regress history`` writes ``history.md`` (a table: case x commit, median
ms) and ``history.png`` (a column per step kind, a line per case, commits in history order:
median ms; ms over the hand-written enumerated step ``ref:unsup-enum`` of the same runs, which
cancels most of the machine's load; peak MiB) into the machine's folder. Absolute milliseconds of runs made at different
times on a shared machine move with its load (up to 2x here): a step shows as slower in the
history when it stays up over several commits; the A/B is the test.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from ..core.provenance import machine_fingerprint

REPO = Path(__file__).resolve().parents[2]
HISTORY = REPO / "results" / "history"
#: where history goes when ``--history-dir`` is not given (a folder a CI job keeps, outside its checkout)
HISTORY_ENV = "SSVAE_HISTORY_DIR"
#: the pytest-benchmark copy of a record ``X.json`` is ``X`` + this
PYTEST_BENCHMARK_SUFFIX = ".pytest-benchmark.json"
#: the case other cases are divided by in the load-robust panel (in the short A/B and the full one)
YARDSTICK = "ref:unsup-enum"


def machine() -> dict:
    return machine_fingerprint()


def root_dir(root: Optional[Path] = None) -> Path:
    """The history folder: ``root`` (``--history-dir``), else ``$SSVAE_HISTORY_DIR``, else ``results/history``."""
    return Path(root or os.environ.get(HISTORY_ENV) or HISTORY)


def append(record: dict, root: Optional[Path] = None, benchmark_json: Optional[dict] = None,
           samples_ms: Optional[Dict[str, List[float]]] = None) -> Path:
    """Write one record (``kind``, ``commit``, ``points``...) with the date and the machine, and its
    pytest-benchmark copy beside it (``benchmark_json`` as given, else made from ``samples_ms`` or the
    record's medians); returns the record's path."""
    fp = machine()
    now = _dt.datetime.now(_dt.timezone.utc)
    record = {"date": now.isoformat(timespec="seconds"), "machine": fp["name"], "fingerprint": fp, **record}
    commit = re.sub(r"[^0-9a-z-]", "", str(record.get("commit", "unknown"))[:10])
    folder = root_dir(root) / fp["name"]
    folder.mkdir(parents=True, exist_ok=True)
    stamp, kind, n = now.strftime("%Y%m%dT%H%M%S"), record.get("kind", "run"), 1
    while True:  # two records in one second: -2, -3... before the kind (`*-ab.json` still finds them)
        path = folder / f"{stamp}-{commit}{f'-{n}' if n > 1 else ''}-{kind}.json"
        if not path.exists():
            break
        n += 1
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    copy = benchmark_json if benchmark_json is not None else pytest_benchmark_json(record, samples_ms)
    path.with_name(path.stem + PYTEST_BENCHMARK_SUFFIX).write_text(json.dumps(copy, indent=1) + "\n")
    return path


def _stats(seconds: List[float]) -> dict:
    """pytest-benchmark's ``stats`` fields of one benchmark (quartiles: ``statistics.quantiles``, inclusive;
    outliers: beyond 1.5 IQR, beyond one standard deviation, as pytest-benchmark counts them)."""
    data = sorted(seconds)
    n, mean = len(data), statistics.fmean(data)
    sd = statistics.stdev(data) if n > 1 else 0.0
    q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive") if n > 1 else (data[0],) * 3
    lo, hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    iqr_out = sum(1 for x in data if x < lo or x > hi)
    sd_out = sum(1 for x in data if x < mean - sd or x > mean + sd)
    return {"min": data[0], "max": data[-1], "mean": mean, "stddev": sd, "rounds": n,
            "median": statistics.median(data), "iqr": q3 - q1, "q1": q1, "q3": q3, "iqr_outliers": iqr_out,
            "stddev_outliers": sd_out, "outliers": f"{sd_out};{iqr_out}", "ld15iqr": min(x for x in data if x >= lo),
            "hd15iqr": max(x for x in data if x <= hi), "ops": 1 / mean, "total": sum(data), "data": data,
            "iterations": 1}


def pytest_benchmark_json(record: dict, samples_ms: Optional[Dict[str, List[float]]] = None) -> dict:
    """A record as ``pytest --benchmark-json`` writes a run: one benchmark per case of the record's own
    commit (side B of an A/B), its rounds ``samples_ms`` (else the record's median, one round)."""
    fp, kind = record["fingerprint"], record.get("kind", "run")
    if samples_ms is None:
        own = [p for p in record.get("points", []) if p["commit"] == record.get("commit")] or [{"cases": {}}]
        samples_ms = {c: [v["ms"]] for c, v in own[-1]["cases"].items() if v.get("ms") is not None}
    versions = record.get("versions") or record.get("b", {}).get("versions") or {}
    benchmarks = []
    for case, ms in sorted(samples_ms.items()):
        if not ms:
            continue
        info = {"commit": record.get("commit"), **(record.get("ratios", {}).get(case) or {})}
        benchmarks.append({"group": f"regress {kind}", "name": case, "fullname": f"bench.regress.{kind}::{case}",
                           "params": {"case": case}, "param": case, "extra_info": info,
                           "options": {"timer": "perf_counter", "disable_gc": False, "min_rounds": len(ms),
                                       "max_time": None, "warmup": True},
                           "stats": _stats([x / 1e3 for x in ms])})
    commit = str(record.get("commit") or "")
    return {"machine_info": {"node": platform.node(), "processor": platform.processor(),
                             "machine": platform.machine(), "python_implementation": platform.python_implementation(),
                             "python_version": versions.get("python", platform.python_version()),
                             "release": platform.release(), "system": platform.system(),
                             "cpu": {"brand_raw": fp.get("cpu_name"), "count": fp.get("usable_cpus"),
                                     "arch": fp.get("arch")},
                             "libraries": versions, "fingerprint": fp},
            "commit_info": {"id": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty"), "time": None,
                            "author_time": None, "project": "ssvae-bench", "branch": None},
            "benchmarks": benchmarks, "datetime": record["date"], "version": _pytest_benchmark_version()}


def _pytest_benchmark_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-benchmark")
    except PackageNotFoundError:  # written without it (`regress ab` does not need it); nothing reads the field
        return "unknown"


def load(machine_name: str, root: Optional[Path] = None) -> List[dict]:
    folder = root_dir(root) / machine_name
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))
            if not p.name.endswith(PYTEST_BENCHMARK_SUFFIX)]


def _commit_order(commits: List[str]) -> Dict[str, int]:
    """Position of each commit in git history (oldest first); unknown commits after, by first appearance."""
    order = {}
    try:
        out = subprocess.run(["git", "rev-list", "--reverse", "--all"], cwd=REPO, capture_output=True, text=True,
                             timeout=30).stdout.split()
        order = {sha: i for i, sha in enumerate(out)}
    except (OSError, subprocess.SubprocessError):
        pass
    pos = {}
    for i, c in enumerate(commits):
        base = c.split("-")[0]
        full = next((sha for sha in order if sha.startswith(base)), None) if base else None
        pos[c] = (order[full] if full else len(order) + i, 0 if not c.endswith("dirty") else 1)
    return pos


def points(records: List[dict]) -> Dict[str, Dict[str, dict]]:
    """{commit label: {case: {"ms": median over records, "peak_mb": ...}}} from git-commit records."""
    import statistics

    acc: Dict[str, Dict[str, Dict[str, list]]] = {}
    for rec in records:
        if rec.get("sides") == "env":
            continue
        for side in rec.get("points", []):
            for case, v in side["cases"].items():
                slot = acc.setdefault(side["commit"], {}).setdefault(case, {"ms": [], "peak_mb": []})
                if v.get("ms") is not None:
                    slot["ms"].append(v["ms"])
                if v.get("peak_mb") is not None:
                    slot["peak_mb"].append(v["peak_mb"])
    return {c: {case: {k: (statistics.median(x) if x else None) for k, x in v.items()} for case, v in cases.items()}
            for c, cases in acc.items()}


def draw(machine_name: str, root: Optional[Path] = None, out_dir: Optional[Path] = None) -> Dict[str, Path]:
    """history.md and history.png for one machine; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = root_dir(root)
    records = load(machine_name, root)
    if not records:
        raise FileNotFoundError(f"no history records in {root / machine_name}")
    pts = points(records)
    pos = _commit_order(list(pts))
    commits = sorted(pts, key=lambda c: pos[c])
    cases = sorted({case for c in pts.values() for case in c})
    out_dir = out_dir or root / machine_name
    out_dir.mkdir(parents=True, exist_ok=True)

    label = {c: c[:7] + ("-dirty" if c.endswith("dirty") else "") for c in commits}
    lines = [f"# Step-time history on {machine_name}", "",
             f"{len(records)} record(s); median ms per step (peak MiB per step in parentheses), commits oldest first.",
             "", "| case | " + " | ".join(label[c] for c in commits) + " |", "|---|" + "---|" * len(commits)]
    for case in cases:
        cells = []
        for c in commits:
            v = pts[c].get(case)
            cells.append("-" if not v or v["ms"] is None else
                         f"{v['ms']:.1f}" + (f" ({v['peak_mb']:.0f})" if v.get("peak_mb") is not None else ""))
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    env_runs = [r for r in records if r.get("sides") == "env"]
    if env_runs:
        lines += ["", "Environment A/Bs (same commit, two environments): B/A per case", ""]
        for r in env_runs:
            desc = f"{r['date']} {r.get('a', {}).get('describe', 'A')} vs {r.get('b', {}).get('describe', 'B')}"
            ratios = ", ".join(f"{k} {v['ratio']:.2f}" for k, v in sorted(r.get("ratios", {}).items())
                               if v.get("ratio") is not None)
            lines.append(f"- {desc}: {ratios}")
    md = out_dir / "history.md"
    md.write_text("\n".join(lines) + "\n")

    kinds = ["sup", "unsup", "aux"]
    # load-robust view: each case over the hand-written enumerated step measured in the same runs
    for c in commits:
        yard = (pts[c].get(YARDSTICK) or {}).get("ms")
        for v in pts[c].values():
            v["rel"] = v["ms"] / yard if yard and v.get("ms") is not None else None
    panels = (("ms", "median ms per step (log)"), ("rel", f"ms / {YARDSTICK} ms, same runs"),
              ("peak_mb", "peak MiB per step"))
    fig, axes = plt.subplots(len(panels), len(kinds), figsize=(5 * len(kinds), 11), sharex=True, squeeze=False)
    x = list(range(len(commits)))
    for col, kind in enumerate(kinds):
        for row, (key, ylabel) in enumerate(panels):
            ax = axes[row][col]
            for case in cases:
                est, _, k = case.partition(":")
                if k != kind and not (est == "ref" and k.startswith(kind)):
                    continue
                ys = [(pts[c].get(case) or {}).get(key) for c in commits]
                if all(v is None for v in ys):
                    continue
                style = "--" if est == "ref" else (":" if est.endswith("-jit") else "-")
                ax.plot(x, [float("nan") if v is None else v for v in ys], style, marker="o", label=case)
            if key == "ms":
                ax.set_yscale("log")
                ax.set_title(f"{kind} steps")
            elif key == "peak_mb":
                ax.set_ylim(bottom=0)
            ax.set_ylabel(ylabel)
            ax.set_xticks(x, [label[c] for c in commits], rotation=45, ha="right")
            ax.grid(alpha=0.3)
            if row == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"step time and peak memory over commits, {machine_name} "
                 f"(dashed: hand-written reference, dotted: Pyro JIT)")
    fig.tight_layout()
    png = out_dir / "history.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return {"table": md, "png": png}
