"""Performance-regression check: step-time RATIOS against a stored per-machine baseline.

    python -m bench regress run  [--short] [--inject-slowdown enum:0.3] [--tolerance 0.2]
    python -m bench regress save [--short]
    python -m bench regress compare RESULTS.json     # re-check a saved pytest-benchmark JSON

``run`` runs ``tests/benchmarks`` under pytest-benchmark (``--benchmark-json``), forms the
ratios below, prints them, and compares them with ``results/baselines/<machine>.json``;
any ratio above ``baseline * (1 + tolerance)`` is a regression: one line per regression
naming the estimator, the step kind, the baseline ratio and the new one, and exit status
1. ``save`` runs the suite ``--repeat`` times (3) and writes, per ratio, the median, the
spread (max/min - 1) it saw and a tolerance from it (twice the spread, within 15%..40%;
short mode +10%), with the machine it came from. Absolute milliseconds are printed, never
checked here (the A/B, ``bench.regress.ab``, compares them within one job).

The machine (``bench.regress.machine``): ``<machine>`` is the fingerprint name of
``bench.core.provenance.machine_fingerprint``
(CPU name, cores and a hash of flags, caches and torch build, e.g. ``intel-xeon-2cpu-c3c94d``),
else, for baselines saved before fingerprints, the CPU-name slug (``amd-epyc-2cpu``). A baseline
judges only where it fits (``unfit``): its fingerprint is this machine's and its torch, Pyro and
Python (major.minor) versions are the running ones. Else the check prints one line, ``regress:
NOT CHECKED against <file>: <reasons>``, and exits 0 without judging any ratio: a ratio measured
on another machine or with other libraries cannot fail a build (the A/B against the parent
commit, measured in the same job, is the gate there). With no baseline, or one that does not
fit, ``run --missing-ok`` says so in one line and exits 0 without running the suite. A baseline
or results file that is not one (truncated, ``[]``, a folder) is one line on stderr, exit 2.

Ratios ("metrics"):

* ``pyro/ref:<estimator>:<kind>`` -- Pyro's step over the hand-written step of the same
  objective (``ssvae.reference``): Pyro's overhead. Where an estimator has no hand-written
  counterpart the reference ``unsup-sampled`` step is the yardstick (``pyro/yardstick:...``).
* ``enum/trace:unsup`` -- the enumerated unlabeled step over the sampled one, both Pyro.

Each ratio is PAIRED: the benchmark of a Pyro step runs its partner step (the reference,
or Pyro's trace step for ``enum/trace``) just before each timed round, and the ratio is the
median over rounds of (this round's step / its partner). Interference from other processes
on a shared machine lasts longer than a step, so it cancels in the ratio.

``--short`` (``REGRESS_SHORT=1``) runs fewer rounds and uses the baseline's
``tolerance_short``. ``--inject-slowdown`` makes a chosen Pyro step do extra work (see
``bench/regress/slowdown.py``) to show the check going red; without it the variable
``SSVAE_INJECT_SLOWDOWN`` is removed from the benchmark's environment. Every ``run``
appends a record to ``<history dir>/<machine>/`` (``bench.regress.history``: ``--history-dir``,
``$SSVAE_HISTORY_DIR``, else ``results/history``), with the suite's pytest-benchmark JSON beside it.

This module holds the check (baseline files, the suite's run, ratios, judging, saving); which machine and
libraries a baseline fits is ``bench.regress.machine``'s, and the ``run``/``save``/``compare`` command
(``cmd_run``, with its history record) is ``bench.regress.cli``'s.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ssvae.flops import step_flops

from . import slowdown
from ..core.errors import UsageError
from ..core.provenance import git_commit
from .machine import legacy_machine_name, machine_info, machine_name, unfit

REPO = Path(__file__).resolve().parents[2]
BASELINES = REPO / "results" / "baselines"
BENCH_DIR = "tests/benchmarks"
DEFAULT_TOLERANCE = 0.20
TOL_FLOOR = 0.15
TOL_CAP = 0.40
SHORT_EXTRA = 0.10
DEFAULT_STAT = "q25"
INJECT_ENV = "SSVAE_INJECT_SLOWDOWN"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def baseline_path(name: Optional[str] = None) -> Path:
    """The baseline of this machine: by fingerprint name, else (older files) by CPU-name slug."""
    if name:
        return BASELINES / f"{name}.json"
    path = BASELINES / f"{machine_name()}.json"
    legacy = BASELINES / f"{legacy_machine_name()}.json"
    return path if path.exists() or not legacy.exists() or os.environ.get("REGRESS_MACHINE") else legacy


def not_checked(path: Path, reasons: List[str]) -> str:
    """The one line of a check that does not judge: the file and why."""
    return (f"regress: NOT CHECKED against {_rel(path)}: {'; '.join(reasons)}; ratios not judged "
            f"(`make regress-save` on this machine stores a baseline that fits)")


def load_baseline(path: Path) -> dict:
    """The baseline stored at ``path``; UsageError (one line) when the file is not one."""
    if path.is_dir():
        raise UsageError(f"regress: baseline {_rel(path)} is a folder, not a baseline file")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"regress: baseline {_rel(path)} cannot be read: {exc}") from None
    metrics = doc.get("metrics") if isinstance(doc, dict) else None
    if not metrics or not isinstance(metrics, dict) or not isinstance(doc.get("machine", {}), dict) or \
            not all(isinstance(m, dict) and isinstance(m.get("ratio"), (int, float)) for m in metrics.values()):
        raise UsageError(f"regress: baseline {_rel(path)} is not a baseline (a JSON object whose \"metrics\" "
                         f"maps names to {{\"ratio\": ...}}; `make regress-save` writes one)")
    return doc


def load_results(path: Path) -> dict:
    """A pytest-benchmark JSON (``--benchmark-json``); UsageError (one line) when the file is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"regress compare: cannot read {path}: {exc}") from None
    benchmarks = doc.get("benchmarks") if isinstance(doc, dict) else None
    if not isinstance(benchmarks, list) or not all(isinstance(b, dict) and "stats" in b for b in benchmarks):
        raise UsageError(f"regress compare: {path} is not pytest-benchmark JSON (an object with a \"benchmarks\" "
                         f"list, as `pytest --benchmark-json` writes)")
    return doc


# -- running the suite --------------------------------------------------------------------------
def run_benchmarks(short: bool, inject: Optional[str] = None, rounds: Optional[int] = None,
                   pytest_args: Tuple[str, ...] = ()) -> dict:
    """Run ``tests/benchmarks`` in a fresh pytest and return pytest-benchmark's JSON."""
    env = dict(os.environ)
    env.pop(INJECT_ENV, None)  # never inherited: only --inject-slowdown sets it
    if inject:
        slowdown.parse(inject)  # fail early on a bad spec
        env[INJECT_ENV] = inject
    env["REGRESS_SHORT"] = "1" if short else "0"
    if rounds:
        env["REGRESS_ROUNDS"] = str(rounds)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        # the probe's draws benchmark (test_probe.py) decided a design once; it is no step-time regression case
        cmd = [sys.executable, "-m", "pytest", BENCH_DIR, "-q", "-p", "no:cacheprovider",
               f"--ignore={Path(BENCH_DIR) / 'test_probe.py'}",
               "--benchmark-enable", "--benchmark-disable-gc", f"--benchmark-json={out}",
               "--benchmark-columns=min,median,max,iqr", "--benchmark-sort=name", *pytest_args]
        print("$ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=REPO, env=env)
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"regress: the benchmark run failed (pytest exit status {proc.returncode})")
        return json.loads(out.read_text())


# -- from benchmark JSON to ratios --------------------------------------------------------------
def _stat(stats: dict, stat: str) -> float:
    return {"min": stats["min"], "q25": stats["q1"], "median": stats["median"], "mean": stats["mean"]}[stat]


def step_times(bench_json: dict, stat: str = DEFAULT_STAT) -> Dict[Tuple[str, str, str], dict]:
    """{(estimator, kind, impl): {"t": seconds by ``stat``, "median": ..., "info": extra_info}}."""
    out = {}
    for b in bench_json["benchmarks"]:
        info = b.get("extra_info", {})
        if "impl" not in info:
            continue
        out[(info["estimator"], info["step_kind"], info["impl"])] = {
            "t": _stat(b["stats"], stat), "median": b["stats"]["median"], "min": b["stats"]["min"],
            "rounds": b["stats"]["rounds"], "info": info}
    return out


def gemm_rate(bench_json: dict, stat: str = DEFAULT_STAT) -> Optional[float]:
    for b in bench_json["benchmarks"]:
        if b.get("extra_info", {}).get("gemm_shape"):
            return b["extra_info"]["flops"] / _stat(b["stats"], stat)
    return None


def paired_ratio(info: dict) -> Tuple[float, float, float]:
    """(median of per-round target/partner ratios, median target s, median partner s)."""
    t, p = info["target_s"], info["partner_s"]
    return (statistics.median(a / b for a, b in zip(t, p)), statistics.median(t), statistics.median(p))


def ratios(bench_json: dict) -> Dict[str, dict]:
    """The metrics the check compares (paired ratios), each with what it is made of."""
    out = {}
    for b in sorted(bench_json["benchmarks"], key=lambda b: b["name"]):
        info = b.get("extra_info", {})
        if not info.get("target_s"):
            continue
        ratio, t, p = paired_ratio(info)
        est, kind = info["estimator"], info["step_kind"]
        if info.get("pair") == "enum/trace":
            name, what = "enum/trace:unsup", "Pyro enum unsup step / Pyro trace unsup step"
        elif info.get("impl") == "pyro":
            exact = info.get("exact_counterpart", True)
            name = f"{'pyro/ref' if exact else 'pyro/yardstick'}:{est}:{kind}"
            what = f"Pyro {est} {kind} step / reference {info['reference']} step"
        else:
            continue
        out[name] = {"ratio": ratio, "estimator": est, "step_kind": kind, "what": what,
                     "pyro_s": t, "ref_s": p, "rounds": len(info["target_s"])}
    return out


def compare(new: Dict[str, dict], baseline: dict, tolerance: Optional[float] = None,
            short: bool = False) -> Tuple[List[str], List[str]]:
    """(regressions, notes): a regression is a ratio above ``baseline * (1 + tolerance)``.

    ``tolerance`` None: each metric's own (``tolerance`` / ``tolerance_short`` in the baseline,
    set by ``save`` from the spread it observed), else the baseline's global one.
    """
    regressions, notes = [], []
    base = baseline.get("metrics", {})
    key = "tolerance_short" if short else "tolerance"
    for name, m in new.items():
        if name not in base:
            notes.append(f"note: {name} ({m['what']}) has no baseline on this machine: not checked "
                         f"(ratio {m['ratio']:.3f}; `make regress-save` to record it)")
            continue
        b = base[name]["ratio"]
        tol = tolerance if tolerance is not None else base[name].get(key, baseline.get(key, DEFAULT_TOLERANCE))
        limit = b * (1 + tol)
        if m["ratio"] > limit:
            regressions.append(
                f"REGRESSION: estimator {m['estimator']}, step kind {m['step_kind']} ({name}: {m['what']}): "
                f"baseline ratio {b:.3f}, new ratio {m['ratio']:.3f} ({m['ratio'] / b - 1:+.0%}; "
                f"tolerance +{tol:.0%}, limit {limit:.3f})")
        elif m["ratio"] < b / (1 + tol):
            notes.append(f"note: {name} is faster than its baseline ({b:.3f} -> {m['ratio']:.3f}): "
                         f"consider `make regress-save`")
    for name in base:
        if name not in new:
            notes.append(f"note: {name} is in the baseline but was not measured")
    return regressions, notes


def table(times, metrics, rate, baseline=None, short=False) -> str:
    lines = [f"{'metric (paired, median of rounds)':<34} {'pyro ms':>8} {'ref ms':>8} {'ratio':>7} "
             f"{'base':>7} {'change':>7} {'tol':>5}"]
    base = (baseline or {}).get("metrics", {})
    for name, m in metrics.items():
        b = base.get(name, {}).get("ratio")
        change = f"{m['ratio'] / b - 1:+.0%}" if b else "-"
        tol = base.get(name, {}).get("tolerance_short" if short else "tolerance")
        lines.append(f"{name:<34} {m['pyro_s'] * 1e3:8.1f} {m['ref_s'] * 1e3:8.1f} {m['ratio']:7.3f} "
                     f"{(f'{b:.3f}' if b else '-'):>7} {change:>7} {(f'{tol:.0%}' if tol else '-'):>5}")
    if rate:
        lines.append("")
        lines.append(f"matmul rate (GEMM 2000x794 @ 794x500): {rate / 1e9:.1f} GFLOP/s")
        lines.append(f"{'reference step':<16} {'GFLOP':>7} {'ms':>8} {'limit ms':>9} {'x limit':>8}")
        seen = set()
        for (est, kind, impl), r in sorted(times.items()):
            rk = r["info"]["reference"]
            if impl != "ref" or rk in seen:
                continue
            seen.add(rk)
            f = step_flops(rk)["total"]
            lines.append(f"{rk:<16} {f / 1e9:7.3f} {r['t'] * 1e3:8.1f} {f / rate * 1e3:9.1f} "
                         f"{r['t'] / (f / rate):8.2f}")
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------------------
def _no_baseline(path: Path) -> str:
    return (f"regress: NOT CHECKED against a stored baseline: none for this machine ({_rel(path)}; "
            f"fingerprint {machine_name()}); `make regress-save` stores one")


def check(bench_json: dict, baseline_file: Path, tolerance: Optional[float], short: bool,
          stat: Optional[str] = None, missing_ok: bool = False) -> int:
    """Print the ratios and judge them against ``baseline_file`` where it fits (``unfit``); 0, 1 or 2."""
    if not baseline_file.exists() and not missing_ok:
        print(f"regress: no baseline for this machine ({_rel(baseline_file)}): "
              f"run `make regress-save` first", file=sys.stderr)
        return 2
    baseline = load_baseline(baseline_file) if baseline_file.exists() else None
    reasons = unfit(baseline) if baseline else []
    if baseline is None or reasons:
        print(table(step_times(bench_json, stat or DEFAULT_STAT), ratios(bench_json),
                    gemm_rate(bench_json, stat or DEFAULT_STAT), None, short))
        print(not_checked(baseline_file, reasons) if reasons else _no_baseline(baseline_file))
        return 0
    stat = stat or baseline.get("stat", DEFAULT_STAT)
    times = step_times(bench_json, stat)
    metrics = ratios(bench_json)
    print(table(times, metrics, gemm_rate(bench_json, stat), baseline, short))
    regressions, notes = compare(metrics, baseline, tolerance, short)
    for n in notes:
        print(n)
    print(f"baseline {_rel(baseline_file)} ({baseline.get('date', '?')}, "
          f"{baseline.get('machine', {}).get('cpu_model', '?')}); tolerance "
          f"{'+%.0f%% (given)' % (100 * tolerance) if tolerance is not None else 'per ratio (tol column)'}"
          f"{' (short mode)' if short else ''}")
    if regressions:
        print("\n".join(regressions), file=sys.stderr)
        print(f"regress: FAILED, {len(regressions)} ratio(s) above the baseline", file=sys.stderr)
        return 1
    print(f"regress: OK, {len(metrics)} ratios within tolerance")
    return 0


def _short_commit() -> str:
    return str(git_commit(REPO)["commit"])[:7]


def tolerances(spread: float) -> Tuple[float, float]:
    """(full, short) tolerance of a ratio whose save runs spread by ``spread`` (max/min - 1).

    Twice the observed spread (a new run is compared with the median of the save runs),
    at least TOL_FLOOR (a few save runs underestimate the spread), at most TOL_CAP; short
    mode (fewer rounds) gets SHORT_EXTRA more, as measured on the machine the defaults
    were chosen on (results/baselines/README.md).
    """
    full = min(TOL_CAP, max(TOL_FLOOR, 2 * spread))
    return round(full, 3), round(min(TOL_CAP + SHORT_EXTRA, full + SHORT_EXTRA), 3)


def save(runs: List[dict], path: Path, short: bool, stat: str, tolerance: Optional[float] = None,
         tolerance_short: Optional[float] = None) -> dict:
    """Write the baseline: per ratio, the median over ``runs`` (pytest-benchmark JSONs), its spread
    and its tolerances (``tolerance``/``tolerance_short`` given: the same for every ratio)."""
    per_run = [ratios(r) for r in runs]
    times = step_times(runs[-1], stat)
    metrics = {}
    for name in per_run[-1]:
        values = [m[name]["ratio"] for m in per_run if name in m]
        spread = max(values) / min(values) - 1
        tol, tol_short = tolerances(spread)
        m = dict(per_run[-1][name])
        m.update({"ratio": statistics.median(values), "runs": [round(v, 4) for v in values],
                  "spread": round(spread, 4),
                  "tolerance": tolerance if tolerance is not None else tol,
                  "tolerance_short": tolerance_short if tolerance_short is not None else tol_short})
        metrics[name] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}
    print(table(times, metrics, gemm_rate(runs[-1], stat)))
    rates = [gemm_rate(r, stat) or 0 for r in runs]
    doc = {
        "machine_name": path.stem,
        "machine": machine_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _short_commit(),
        "short": short,
        "save_runs": len(runs),
        "stat": stat,
        "tolerance": tolerance if tolerance is not None else TOL_FLOOR,
        "tolerance_short": tolerance_short if tolerance_short is not None else TOL_FLOOR + SHORT_EXTRA,
        "matmul_gflops": round(statistics.median(rates) / 1e9, 2),
        "metrics": metrics,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"regress: baseline written to {_rel(path)} (median of {len(runs)} run(s); spread and "
          f"tolerance per ratio inside)")
    return doc
