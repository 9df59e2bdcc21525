"""``python -m bench regress {run,save,compare,ab,history}``: the parser and the commands.

``cmd_run`` runs ``run``, ``save`` and ``compare`` (the baseline check of ``bench.regress.baseline``, and
``run``'s history record), ``cmd_ab`` the A/B (``bench.regress.ab``), ``cmd_history`` the drawing of the
history (``bench.regress.history``).

``add_parser(subparsers)`` registers ``regress`` in ``python -m bench``; ``main`` serves
``python -m bench.regress`` too. See ``docs/regressions.md``.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from ..commands import COMMANDS
from ..core.errors import Parser, UsageError, fail, str_list
from ..core.provenance import commit_label, machine_fingerprint, versions
from .slowdown import parse
from . import ab as abmod
from . import baseline, history
from .baseline import (DEFAULT_STAT, INJECT_ENV, SHORT_EXTRA, _no_baseline, _rel, baseline_path, check,
                       load_baseline, load_results, not_checked, ratios, save, step_times)
from .machine import unfit


def add_parser(sub) -> None:
    r = sub.add_parser("regress", help=COMMANDS["regress"].help)
    rs = r.add_subparsers(dest="command_regress", parser_class=Parser, required=True)
    for name, helptext in (("run", "time tests/benchmarks; compare paired ratios with the stored baseline"),
                           ("save", "store this machine's baseline (3 runs of the suite)"),
                           ("compare", "re-check a saved pytest-benchmark JSON against the baseline")):
        p = rs.add_parser(name, help=helptext)
        if name == "compare":
            p.add_argument("results", help="a pytest-benchmark JSON file")
        p.add_argument("--short", action="store_true",
                       default=os.environ.get("REGRESS_SHORT", "") not in ("", "0"),
                       help="fewer rounds (also REGRESS_SHORT=1)")
        p.add_argument("--inject-slowdown", metavar="EST[/KIND]:FRAC",
                       help="make that Pyro step do FRAC more work, e.g. enum:0.3 (demonstration)")
        p.add_argument("--tolerance", type=float, help="allowed relative rise of a ratio (default: the baseline's)")
        p.add_argument("--stat", choices=("min", "q25", "median", "mean"),
                       help=f"per-benchmark time (default {DEFAULT_STAT})")
        p.add_argument("--rounds", type=int, help="rounds per benchmark (default 9, short 5)")
        p.add_argument("--baseline", type=Path, help="baseline file (default results/baselines/<machine>.json)")
        p.add_argument("--json-out", type=Path, help="also keep the pytest-benchmark JSON here")
        p.add_argument("--missing-ok", action="store_true",
                       help="with no baseline for this machine, or one that does not fit it (fingerprint, "
                            "torch/Pyro/Python), say so in one line and exit 0 without running the suite (CI)")
        p.add_argument("--repeat", type=int, default=None, help="save: runs of the suite (default 3, short 1)")
        if name == "run":
            _history_args(p)
        p.set_defaults(func=cmd_run)

    a = rs.add_parser("ab", help="A/B of two revisions or two environments, interleaved in one job")
    a.add_argument("--base", default=None, help="side A: this git revision in a temporary worktree "
                                                "(default HEAD~1 unless an environment option is given)")
    a.add_argument("--head", default=None, help="side B: this git revision (default: the working tree)")
    for s in ("a", "b"):
        a.add_argument(f"--pyro-{s}", metavar="VERSION",
                       help=f"side {s.upper()}: pyro-ppl==VERSION (pip --target overlay; the installed one as is)")
        a.add_argument(f"--pythonpath-{s}", metavar="DIR", action="append", default=[],
                       help=f"side {s.upper()}: put DIR first on PYTHONPATH (a Pyro checkout, an overlay)")
        a.add_argument(f"--python-{s}", metavar="PY", help=f"side {s.upper()}: this Python interpreter")
    a.add_argument("--short", action="store_true", help=f"CI mode: cases {','.join(abmod.SHORT_CASES)}, "
                                                        f"fewer rounds")
    a.add_argument("--cases", type=str_list, help="comma-separated ESTIMATOR:KIND / ref:KIND (default: all, "
                                                  "with the JIT variants)")
    a.add_argument("--no-jit", action="store_true", help="leave out trace-jit / enum-jit")
    a.add_argument("--rounds", type=int, help="interleaved rounds per side (default 15, short 10)")
    a.add_argument("--reps", type=int, help="steps per case per round; the round keeps the fastest (default 2, short 1)")
    a.add_argument("--processes", type=int, default=abmod.PROCESSES,
                   help=f"fresh runner pairs the rounds are split over (default {abmod.PROCESSES})")
    a.add_argument("--threads", type=int, default=int(os.environ.get("REGRESS_THREADS", "1")),
                   help="torch threads per side (default 1)")
    a.add_argument("--tolerance", type=float, default=abmod.DEFAULT_TOLERANCE,
                   help=f"a significant slowdown beyond this fails (default {abmod.DEFAULT_TOLERANCE})")
    a.add_argument("--inject-slowdown", metavar="EST[/KIND]:FRAC", help="side B only: extra work in that step")
    a.add_argument("--if-available", action="store_true",
                   help="when the base revision is absent, say NOT CHECKED and exit 0 (not in a shallow clone "
                        "under $CI: that is an error, exit 2)")
    a.add_argument("--json-out", type=Path, help="write the rows and raw rounds here")
    a.add_argument("--table-out", type=Path, help="write a markdown table (with provenance) here")
    _history_args(a)
    a.set_defaults(func=cmd_ab)

    h = rs.add_parser("history", help="draw each benchmark over commits (PNG and markdown table)")
    h.add_argument("--machine", help="<history dir>/<machine> (default: this machine's fingerprint name)")
    h.add_argument("--history-dir", type=Path, default=None,
                   help=f"the history folder (default ${history.HISTORY_ENV}, else results/history)")
    h.add_argument("--out", type=Path, help="output folder (default: the machine's history folder)")
    h.set_defaults(func=cmd_history)


def _history_args(p) -> None:
    p.add_argument("--history-dir", type=Path, default=None,
                   help=f"write the history record under DIR/<machine>/ (default ${history.HISTORY_ENV}, "
                        f"else results/history)")
    p.add_argument("--no-history", action="store_true", help="write no history record")


def _env_mode(args) -> bool:
    return any(getattr(args, f"{k}_{s}") for k in ("pyro", "pythonpath", "python") for s in ("a", "b"))


def _env_side(args, s: str) -> abmod.Side:
    side = abmod.working_tree_side(s.upper())
    side.python = getattr(args, f"python_{s}") or sys.executable
    parts = []
    version = getattr(args, f"pyro_{s}")
    if version:
        overlay = abmod.pyro_overlay(version, side.python)
        if overlay:
            side.pythonpath.append(str(overlay))
        parts.append(f"pyro {version}" + (" (overlay)" if overlay else " (installed)"))
    for d in getattr(args, f"pythonpath_{s}"):
        side.pythonpath.append(str(Path(d).resolve()))
        parts.append(f"PYTHONPATH {Path(d).name}")
    if getattr(args, f"python_{s}"):
        parts.append(f"python {getattr(args, f'python_{s}')}")
    side.describe = ", ".join(parts) or f"the installed environment at the {side.describe}"
    return side


def cmd_ab(args) -> int:
    env_mode = _env_mode(args)
    if env_mode and (args.base or args.head):
        raise UsageError("regress ab: give either git revisions (--base/--head) or environments "
                         "(--pyro-*/--pythonpath-*/--python-*), not both")
    if args.inject_slowdown:
        try:
            parse(args.inject_slowdown)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    rounds = args.rounds or (10 if args.short else 15)
    reps = args.reps or (1 if args.short else 2)
    if rounds < 3:
        raise UsageError("regress ab: --rounds must be at least 3 (an interval needs rounds)")
    cases = args.cases or (abmod.SHORT_CASES if args.short else abmod.all_cases(jit=not args.no_jit))
    with contextlib.ExitStack() as stack:
        try:
            if env_mode:
                a, b = _env_side(args, "a"), _env_side(args, "b")
            else:
                base = args.base or "HEAD~1"
                a = stack.enter_context(abmod.git_side(base, "A"))
                b = (stack.enter_context(abmod.git_side(args.head, "B")) if args.head
                     else abmod.working_tree_side("B"))
        except abmod.ShallowCloneError as exc:
            raise UsageError(str(exc)) from None
        except abmod.ABError as exc:
            if args.if_available:
                print(f"regress ab: NOT CHECKED against {args.base or 'HEAD~1'}: {exc}")
                return 0
            raise UsageError(str(exc)) from None
        print(f"regress ab: A = {a.describe}")
        print(f"regress ab: B = {b.describe}" + (f"  [injected slowdown {args.inject_slowdown}]"
                                                 if args.inject_slowdown else ""))
        try:
            raw = abmod.measure(a, b, cases, rounds, reps, threads=args.threads, inject_b=args.inject_slowdown,
                                processes=max(1, min(args.processes, rounds)))
        except abmod.ABError as exc:
            print(f"regress ab: {exc}", file=sys.stderr)
            return 2
    rows = abmod.analyse(raw, cases, args.tolerance)
    va, vb = raw["setup"]["A"]["versions"], raw["setup"]["B"]["versions"]
    print(f"A: torch {va['torch']}, pyro {va['pyro']}; B: torch {vb['torch']}, pyro {vb['pyro']}; "
          f"{rounds} rounds over {args.processes} process pair(s), the fastest of >= {reps} step(s) and "
          f">= {abmod.MIN_MS:.0f} ms per round, {args.threads} thread(s)")
    print(abmod.table(rows))
    problems = abmod.verdict_lines(rows, a, b, args.tolerance)
    fp = machine_fingerprint()
    summary = {"a": {"describe": a.describe, "commit": a.commit, "versions": va},
               "b": {"describe": b.describe, "commit": b.commit, "versions": vb},
               "rounds": rounds, "reps": reps, "processes": args.processes, "min_ms": abmod.MIN_MS,
               "threads": args.threads, "tolerance": args.tolerance,
               "inject_b": args.inject_slowdown, "machine": fp["name"]}
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({**summary, "fingerprint": fp, "rows": rows, "raw": raw}, indent=1) + "\n")
    if args.table_out:
        _write_markdown(args.table_out, summary, fp, rows)
        print(f"regress ab: table written to {_rel(args.table_out)}")
    if not args.no_history and not args.inject_slowdown:
        def side_cases(k):
            return {c: {"ms": r[f"{k}_ms"], "peak_mb": r[f"{k}_peak_mb"], "status": r[f"{k}_status"]}
                    for c, r in rows.items()}

        record = {"kind": "ab", "sides": "env" if env_mode else "git", "commit": b.commit, **summary,
                  "points": ([] if env_mode else [{"commit": a.commit, "cases": side_cases("a")},
                                                  {"commit": b.commit, "cases": side_cases("b")}]),
                  "ratios": {c: {k: r[k] for k in ("ratio", "ci_low", "ci_high", "verdict")} for c, r in rows.items()},
                  "status": 1 if problems else 0}
        path = history.append(record, root=args.history_dir,
                              samples_ms={c: raw["values"]["B"][c] for c in cases if raw["values"]["B"].get(c)})
        print(f"regress ab: history record {_rel(path)} (and its pytest-benchmark JSON beside it)")
    for line in problems:
        print(line, file=sys.stderr)
    checked = sum(1 for r in rows.values() if r["ratio"] is not None)
    what = f"B ({b.describe}) against A ({a.describe})"
    if problems:
        print(f"regress ab: FAILED: {len(problems)} of {len(rows)} cases slower or broken, {what}", file=sys.stderr)
        return 1
    print(f"regress ab: OK: {checked} cases checked, none significantly slower than +{args.tolerance:.0%}, {what}")
    return 0


def _write_markdown(path: Path, summary: dict, fp: dict, rows: dict) -> None:
    a, b = summary["a"], summary["b"]
    lines = [f"# A/B: B = {b['describe']} against A = {a['describe']}", "",
             f"- machine: {fp['name']} ({fp['cpu_name']}, {fp['usable_cpus']} usable CPUs, "
             f"{fp['torch_build']['cpu_capability']}), {summary['threads']} torch thread(s)",
             f"- A: torch {a['versions']['torch']}, pyro {a['versions']['pyro']}, python {a['versions']['python']}",
             f"- B: torch {b['versions']['torch']}, pyro {b['versions']['pyro']}, python {b['versions']['python']}",
             f"- commit {str(b['commit'])[:10]}; {summary['rounds']} interleaved rounds (A,B / B,A) over "
             f"{summary.get('processes', 1)} pair(s) of fresh runner processes; per case per round the fastest of "
             f">= {summary['reps']} step(s) and >= {summary.get('min_ms', 0):.0f} ms of steps",
             f"- B/A = exp(median of per-round log(B/A)); interval: bootstrap of that median, 95 %; "
             f"slower = B/A > 1 + {summary['tolerance']:.2f} with the interval above 1",
             "- peak MiB: resident-set growth during one step after warm-up (malloc_trim first, RSS sampled)",
             "", abmod.table(rows, markdown=True), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def history_record(bench_json: dict, stat: str, short: bool) -> dict:
    """The ``regress run`` record for the history: medians, ratios, the machine's versions."""
    cases = {}
    for (est, kind, impl), t in step_times(bench_json, stat).items():
        name = f"{est}:{kind}" if impl == "pyro" else f"ref:{t['info']['reference']}"
        cases[name] = {"ms": t["median"] * 1e3, "peak_mb": None}
    commit = commit_label()
    return {"kind": "run", "commit": commit, "short": short, "versions": versions(),
            "points": [{"commit": commit, "cases": cases}],
            "ratios": {k: {"ratio": v["ratio"]} for k, v in ratios(bench_json).items()}}


def cmd_run(args) -> int:
    path = _baseline_arg(args)
    if args.command_regress == "run" and args.missing_ok:  # CI: nothing to judge against, nothing to run
        reasons = unfit(load_baseline(path)) if path.exists() else None
        if reasons is None or reasons:
            print(_no_baseline(path) if reasons is None else not_checked(path, reasons))
            return 0
    if args.command_regress == "compare":
        if not getattr(args, "results", None):
            raise SystemExit("regress compare needs a pytest-benchmark JSON file")
        return check(load_results(args.results), path, args.tolerance, args.short, args.stat, args.missing_ok)
    if args.command_regress == "save" and (args.inject_slowdown or os.environ.get(INJECT_ENV)):
        print(f"regress: refusing to save a baseline with an injected slowdown "
              f"({args.inject_slowdown or os.environ.get(INJECT_ENV)})", file=sys.stderr)
        return 2
    repeat = 1 if args.command_regress == "run" else (args.repeat or (1 if args.short else 3))
    # looked up on bench.regress.baseline when called (tests replace it there)
    runs = [baseline.run_benchmarks(args.short, args.inject_slowdown, args.rounds) for _ in range(repeat)]
    bench_json = runs[-1]
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(runs if repeat > 1 else bench_json))
    if args.command_regress == "save":
        save(runs, path, args.short, args.stat or DEFAULT_STAT, args.tolerance,
             None if args.tolerance is None else args.tolerance + SHORT_EXTRA)
        return 0
    status = check(bench_json, path, args.tolerance, args.short, args.stat, args.missing_ok)
    if not args.inject_slowdown and not args.no_history:
        rec = history_record(bench_json, args.stat or DEFAULT_STAT, args.short)
        rec["status"] = status
        path = history.append(rec, root=args.history_dir, benchmark_json=bench_json)
        print(f"regress: history record {_rel(path)} (and its pytest-benchmark JSON beside it)")
    return status


def _baseline_arg(args) -> Path:
    if args.baseline is None:
        return baseline_path().resolve()
    return (args.baseline if args.baseline.is_absolute() else Path.cwd() / args.baseline).resolve()


def cmd_history(args) -> int:
    name = args.machine or history.machine()["name"]
    try:
        out = history.draw(name, root=args.history_dir, out_dir=args.out)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    print(out["table"].read_text())
    print(f"regress history: {_rel(out['table'])}, {_rel(out['png'])}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m bench.regress ...``: the same commands as ``python -m bench regress ...``."""
    parser = Parser(prog="python -m bench.regress")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(["regress", *argv])
        return args.func(args)
    except UsageError as exc:
        return fail(str(exc))
