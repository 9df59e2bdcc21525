"""A/B in one job: two sides' step times, interleaved round by round, compared in milliseconds.

A side is a checkout of this project and a Python environment: the working tree, a git
revision checked out in a temporary ``git worktree`` (``--base HEAD~1``), or the working
tree with another Pyro on ``PYTHONPATH`` (``--pyro-a 1.9.1``: an overlay made by
``pip install --target DIR --no-deps pyro-ppl==1.9.1``, or ``--pythonpath-b`` a Pyro checkout).
Each side runs ``runner.py`` as a long-lived process; rounds alternate A,B then B,A (so
neither side always goes first), each round timing every case ``reps`` times and at least
``MIN_MS`` of steps (small steps run several times; the round's value is the fastest:
interference only adds time). The rounds are split over ``PROCESSES`` pairs of fresh
runner processes (a process's own placement can make it slower throughout). Both sides thus see the same minutes
of a shared machine, and absolute milliseconds are comparable.

Per case, with ``d_r = log(B_r / A_r)`` over rounds r (paired by round):

* the ratio B/A is ``exp(median d)``; its 95 % interval a bootstrap of the median of ``d``
  (``scipy.stats.bootstrap``, percentile, 4000 resamples, fixed seed);
* ``slower`` when the ratio exceeds ``1 + tolerance`` AND the interval lies above 1 (a
  significant slowdown beyond the tolerance); ``faster`` symmetrically; else ``same``;
* a case that runs on A but fails on B (a JIT that breaks on a new torch) is ``broken``.

Exit status 1 on any ``slower`` or ``broken`` case. Peak memory per step (``bench/core/peakmem.py``)
is measured once per side after warm-up and shown beside the times; it is reported, not checked.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ssvae.estimators import REGISTRY
from ssvae.reference import REFERENCE_LOSSES

from ..core.provenance import git_commit
from ..core.stats import CONFIDENCE, median_ratio_interval

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().parent / "runner.py"
OVERLAYS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ssvae-bench" / "pyro-overlays"
DEFAULT_TOLERANCE = 0.15
#: a case's steps in one round add up to at least this many ms (small steps: several, the fastest kept)
MIN_MS = 200.0
#: fresh runner processes per side (rounds are split between them; see ``measure``)
PROCESSES = 2
JIT_ESTIMATORS = ("trace", "enum")
#: the short mode's cases (CI): the paper's two estimators, the classifier baseline, one
#: aux step (the same objective for every estimator) and the hand-written enumerated step
SHORT_CASES = ["trace:sup", "trace:unsup", "enum:sup", "enum:unsup", "enum:aux", "baseline:sup",
               "ref:unsup-enum"]


class ABError(Exception):
    """A side could not be set up (no such revision, pip failed, the runner died)."""


class ShallowCloneError(ABError):
    """In CI, a revision is missing because the clone is shallow: the job must fetch history, not pass."""


@dataclass
class Side:
    label: str
    root: Path
    python: str = sys.executable
    pythonpath: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    describe: str = ""
    commit: str = ""


def all_cases(jit: bool = True) -> List[str]:
    """Every estimator's steps (as in training), the JIT variants of trace and enum, the reference steps."""
    out = []
    for name, est in REGISTRY.items():
        kinds = ("sup",) if est.kind == "supervised" else ("sup", "unsup", "aux")
        out += [f"{name}:{k}" for k in kinds]
        if jit and name in JIT_ESTIMATORS:
            out += [f"{name}-jit:{k}" for k in kinds]
    out += [f"ref:{k}" for k in REFERENCE_LOSSES]
    return out


# -- sides -------------------------------------------------------------------------------------
def _git(*args, cwd=None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd or REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ABError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"git {args[0]} failed")
    return proc.stdout.strip()


def in_ci() -> bool:
    """``$CI`` set, and not to "false" or "0" (GitHub Actions, GitLab, CircleCI... set CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "false", "0")


def is_shallow() -> bool:
    try:
        return _git("rev-parse", "--is-shallow-repository") == "true"
    except (ABError, OSError):
        return False


def resolve_rev(rev: str) -> str:
    """The full sha of ``rev``; ABError when the repository does not have it (no history, shallow clone),
    ShallowCloneError when that is because a CI job's clone is shallow."""
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except (ABError, OSError):
        pass
    if not is_shallow():
        raise ABError(f"no commit {rev!r} in this checkout (no such revision, or HEAD has no parent)")
    if in_ci():
        raise ShallowCloneError(
            f"regress ab: no commit {rev!r}: this CI checkout is a shallow clone (CI={os.environ['CI']}), so the "
            f"A/B cannot run and would pass silently; fetch the history: `fetch-depth: 0` in actions/checkout, "
            f"or `git fetch --unshallow` before this step")
    raise ABError(f"no commit {rev!r} in this checkout: a shallow clone (`git fetch --unshallow`)")


@contextlib.contextmanager
def git_side(rev: str, label: str):
    """A side at revision ``rev``, checked out in a temporary worktree removed afterwards."""
    sha = resolve_rev(rev)
    tmp = Path(tempfile.mkdtemp(prefix="regress-ab-"))
    path = tmp / "tree"
    _git("worktree", "add", "--detach", "--quiet", str(path), sha)
    try:
        yield Side(label, path, describe=f"{rev} = {sha[:10]} (git worktree)", commit=sha)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def working_tree_side(label: str) -> Side:
    info = git_commit(REPO)
    dirty = "-dirty" if info["dirty"] else ""
    return Side(label, REPO, describe=f"working tree {str(info['commit'])[:10]}{dirty}",
                commit=f"{info['commit']}{dirty}")


def installed_pyro() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyro-ppl")
    except PackageNotFoundError:
        return None


def pyro_overlay(version: str, python: str = sys.executable) -> Optional[Path]:
    """A folder holding pyro-ppl==``version`` alone (pure Python), for PYTHONPATH; None if installed."""
    if version == installed_pyro():
        return None
    target = OVERLAYS / f"pyro-ppl-{version}"
    if not (target / "pyro" / "__init__.py").exists():
        print(f"regress ab: pip install --target {target} --no-deps pyro-ppl=={version}", flush=True)
        proc = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                               f"pyro-ppl=={version}"], capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ABError(f"cannot install pyro-ppl=={version}: {last}")
    return target


# -- the runners -------------------------------------------------------------------------------
class RunnerProcess:
    def __init__(self, side: Side, inject: Optional[str], log_dir: Path):
        env = dict(os.environ)
        env.pop("SSVAE_INJECT_SLOWDOWN", None)
        if inject:
            env["SSVAE_INJECT_SLOWDOWN"] = inject
        env["PYTHONPATH"] = os.pathsep.join([*side.pythonpath, str(side.root)])
        env.update(side.env)
        self.side = side
        self.log = log_dir / f"side-{side.label}.log"
        self.proc = subprocess.Popen([side.python, str(RUNNER), "--root", str(side.root)], cwd=side.root,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "w"), text=True, bufsize=1)

    def ask(self, **msg) -> dict:
        self.send(**msg)
        return self.receive()

    def send(self, **msg) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text()[-1500:]
            raise ABError(f"side {self.side.label} runner died:\n{tail}")
        out = json.loads(line)
        if "error" in out and len(out) == 1:
            raise ABError(f"side {self.side.label}: {out['error']}")
        return out

    def close(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def measure(a: Side, b: Side, cases: List[str], rounds: int, reps: int, warmup: int = 2, threads: int = 1,
            inject_b: Optional[str] = None, min_ms: float = MIN_MS, processes: int = PROCESSES,
            progress=print) -> dict:
    """``rounds`` interleaved rounds, in ``processes`` blocks each with a fresh runner per side.

    Fresh processes: an unchanged tree once came out 18 % slower on one case, significantly,
    in a single pair of processes (a process's own placement: heap, pages, core), where
    rounds only average what changes between rounds. Each block sets both sides up anew, so
    such an effect is one block's, averaged over blocks and visible in the spread.
    """
    values = {k: {c: [] for c in cases} for k in ("A", "B")}
    failed: Dict[str, Dict[str, str]] = {"A": {}, "B": {}}
    setup: Dict[str, dict] = {}
    t0 = time.perf_counter()
    sizes = [rounds // processes + (1 if i < rounds % processes else 0) for i in range(processes)]
    done = 0
    for block, n in enumerate(s for s in sizes if s):
        with tempfile.TemporaryDirectory(prefix="regress-ab-logs-") as logs:
            runners = {"A": RunnerProcess(a, None, Path(logs)), "B": RunnerProcess(b, inject_b, Path(logs))}
            try:
                for r in runners.values():  # both set up at once (imports, warm-up, JIT, memory): untimed
                    r.send(cmd="setup", cases=cases, warmup=warmup, threads=threads)
                got = {k: r.receive() for k, r in runners.items()}
                for k, g in got.items():
                    if k not in setup:
                        setup[k] = g
                    else:  # a case failing in a later block counts as failing
                        for c, st in g["cases"].items():
                            if st["status"] != "ok" and setup[k]["cases"][c]["status"] == "ok":
                                setup[k]["cases"][c] = st
                progress(f"regress ab: process pair {block + 1}/{len([s for s in sizes if s])} set up "
                         f"({time.perf_counter() - t0:.0f} s); {n} rounds, >= {reps} step(s) and >= "
                         f"{min_ms:.0f} ms per case per round")
                for r in range(n):
                    for k in ("A", "B") if (done + r) % 2 == 0 else ("B", "A"):
                        out = runners[k].ask(cmd="round", reps=reps, min_ms=min_ms)
                        for c, ms in out["ms"].items():
                            values[k][c].append(min(ms))
                        failed[k].update(out.get("failed", {}))
                done += n
            finally:
                for r in runners.values():
                    r.close()
    progress(f"regress ab: {done} rounds measured in {time.perf_counter() - t0:.0f} s")
    return {"setup": setup, "values": values, "round_failures": failed}


# -- statistics --------------------------------------------------------------------------------
def compare_case(a_ms: List[float], b_ms: List[float], tolerance: float, confidence: float = CONFIDENCE) -> dict:
    """B/A of one case from paired rounds: ratio, interval, verdict (see the module docstring)."""
    n = min(len(a_ms), len(b_ms))
    ratio, lo, hi = median_ratio_interval(a_ms[:n], b_ms[:n], confidence)
    if ratio > 1 + tolerance and lo > 1:
        verdict = "slower"
    elif ratio < 1 / (1 + tolerance) and hi < 1:
        verdict = "faster"
    else:
        verdict = "same"
    return {"ratio": ratio, "ci_low": lo, "ci_high": hi, "verdict": verdict, "rounds": int(n),
            "a_ms": float(np.median(a_ms[:n])), "b_ms": float(np.median(b_ms[:n]))}


def analyse(raw: dict, cases: List[str], tolerance: float) -> Dict[str, dict]:
    out = {}
    for c in cases:
        sa, sb = raw["setup"]["A"]["cases"][c], raw["setup"]["B"]["cases"][c]
        fa = raw["round_failures"]["A"].get(c) or (sa["error"] if sa["status"] != "ok" else None)
        fb = raw["round_failures"]["B"].get(c) or (sb["error"] if sb["status"] != "ok" else None)
        row = {"case": c, "a_status": "failed" if raw["round_failures"]["A"].get(c) else sa["status"],
               "b_status": "failed" if raw["round_failures"]["B"].get(c) else sb["status"],
               "a_error": fa, "b_error": fb, "a_peak_mb": sa.get("peak_mb"), "b_peak_mb": sb.get("peak_mb"),
               "injected_b": sb.get("injected")}
        va, vb = raw["values"]["A"][c], raw["values"]["B"][c]
        if row["a_status"] == "ok" and row["b_status"] == "ok" and va and vb:
            row.update(compare_case(va, vb, tolerance))
        else:
            row.update(ratio=None, ci_low=None, ci_high=None, rounds=0,
                       a_ms=float(np.median(va)) if va else None, b_ms=float(np.median(vb)) if vb else None,
                       verdict=("broken" if row["a_status"] == "ok" and row["b_status"] == "failed" else
                                "fixed" if row["a_status"] == "failed" and row["b_status"] == "ok" else
                                "failed" if "failed" in (row["a_status"], row["b_status"]) else "missing"))
        out[c] = row
    return out


# -- output --------------------------------------------------------------------------------------
def _f(x, fmt):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def table(rows: Dict[str, dict], markdown: bool = False) -> str:
    head = ["case", "A ms", "B ms", "B/A", f"{int(CONFIDENCE * 100)}% interval", "verdict", "A MiB", "B MiB"]
    lines = []
    for r in rows.values():
        note = ""
        if r["verdict"] in ("broken", "failed", "fixed", "missing"):
            note = f" A: {r['a_error'] or 'ok'}; B: {r['b_error'] or 'ok'}" if markdown else \
                f"  [{(r['b_error'] or r['a_error'] or '')[:90]}]"
        lines.append([r["case"], _f(r["a_ms"], ".1f"), _f(r["b_ms"], ".1f"), _f(r["ratio"], ".3f"),
                      "-" if r["ci_low"] is None else f"{_f(r['ci_low'], '.3f')}-{_f(r['ci_high'], '.3f')}",
                      r["verdict"] + ("" if markdown else note), _f(r["a_peak_mb"], ".1f"),
                      _f(r["b_peak_mb"], ".1f")] + ([note.strip() or ""] if markdown else []))
    if markdown:
        head = head + ["message"]
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(x.replace("|", "/") for x in ln) + " |" for ln in lines]
        return "\n".join(out)
    widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    fmt = lambda row: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)  # noqa: E731
                                for i, (x, w) in enumerate(zip(row, widths)))
    # the note sits in the verdict column: print it after the row instead of widening the table
    out = [fmt(head)]
    for ln in lines:
        verdict, _, note = ln[5].partition("  [")
        out.append(fmt(ln[:5] + [verdict] + ln[6:]) + (f"  [{note}" if note else ""))
    return "\n".join(out)


def verdict_lines(rows: Dict[str, dict], a: Side, b: Side, tolerance: float) -> List[str]:
    out = []
    for r in rows.values():
        if r["verdict"] == "slower":
            out.append(f"REGRESSION: {r['case']}: B {r['b_ms']:.1f} ms vs A {r['a_ms']:.1f} ms, B/A {r['ratio']:.3f} "
                       f"({CONFIDENCE:.0%} interval {r['ci_low']:.3f}-{r['ci_high']:.3f}; tolerance +{tolerance:.0%})")
        elif r["verdict"] == "broken":
            out.append(f"BROKEN: {r['case']} runs on A but fails on B: {r['b_error']}")
    return out
