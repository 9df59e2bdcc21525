"""Draws per second of the gradient probe: the loop of ``loss_and_grads`` calls against batched draws.

``python -m bench.run.probe_bench [--out results/benchmarks] [--draws 50] [--rounds 3]`` times
``ssvae.metrics.draw_gradients`` both ways (``batched=False``: one call per draw; ``batched=True``:
vectorised particles, :mod:`ssvae.particles`) for trace and enum on the labeled (``sup``) and
unlabeled (``unsup``) batch, at the run's sizes (``ssvae.config.DEFAULT_RUN``: 784-500-50 networks, a
batch of the probe's size) on random binary images, on one torch thread. The two ways alternate round
by round, so that a neighbour's load falls on both; each keeps its median round. Wall time is what a
probe waits; CPU time (``time.process_time``) is kept beside it, less sensitive to a busy machine.

Writes ``probe-draws.json`` (every round) and ``probe-draws.md`` (the table). A run beside other
processes (``bench.core.provenance.other_cpu_load`` at least ``bench.core.schema.CONTENDED_LOAD`` cores, or a
1-minute load average above one core beside this one) is marked "contended". ``tests/benchmarks/
test_probe.py`` times the same draws under pytest-benchmark.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pyro
import torch

from ssvae.config import DEFAULT_RUN
from ssvae.estimators import get_estimator
from ssvae.metrics import draw_gradients
from ssvae.model import SSVAE

from ..core.errors import Parser, UsageError, fail, writable
from ..core.provenance import commit_label, cpu_name, cpu_times, git_commit, other_cpu_load
from ..core.schema import CONTENDED_LOAD
from ..core.store import write_measurement

REPO = Path(__file__).resolve().parents[2]
ESTIMATORS = ("trace", "enum")
STEP_KINDS = ("unsup", "sup")


def probe_case(estimator: str, step_kind: str, batch_size: int = DEFAULT_RUN.batch_size, seed: int = 0):
    """(objective, parameter groups, args) of one probe at the run's sizes: random binary images, one-hot labels."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    ss = SSVAE()
    g = torch.Generator().manual_seed(seed)
    xs = (torch.rand(batch_size, ss.input_size, generator=g) > 0.5).float()
    ys = torch.nn.functional.one_hot(torch.randint(0, ss.num_classes, (batch_size,), generator=g),
                                     ss.num_classes).float()
    return get_estimator(estimator).build(ss, {}), ss.param_groups(), (xs,) if step_kind == "unsup" else (xs, ys)


def draws(estimator: str, step_kind: str, n: int, batched: bool) -> Callable[[], Dict[str, torch.Tensor]]:
    """A call that takes ``n`` gradient draws of one probe case, the loop's or batched."""
    obj, groups, args = probe_case(estimator, step_kind)
    return lambda: draw_gradients(obj, groups, args, n, batched=batched)


def _timed(fn) -> tuple:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(estimator: str, step_kind: str, n: int, rounds: int) -> dict:
    """One row: the loop's and the batched draws per second (median round, wall and CPU), rounds alternating."""
    fns = {"loop": draws(estimator, step_kind, n, False), "batched": draws(estimator, step_kind, n, True)}
    for fn in fns.values():  # warm-up: allocator, Pyro's first trace
        fn()
    times = {way: {"wall_s": [], "cpu_s": []} for way in fns}
    for _ in range(rounds):
        for way, fn in fns.items():
            wall, cpu = _timed(fn)
            times[way]["wall_s"].append(round(wall, 4))
            times[way]["cpu_s"].append(round(cpu, 4))
    rate = {f"{way}_{kind}": n / statistics.median(t[f"{kind}_s"]) for way, t in times.items() for kind in ("wall", "cpu")}
    return {"estimator": estimator, "step_kind": step_kind, "n": n, "rounds": rounds,
            "loop_draws_per_s": round(rate["loop_wall"], 2), "batched_draws_per_s": round(rate["batched_wall"], 2),
            "speedup": round(rate["batched_wall"] / rate["loop_wall"], 2),
            "loop_cpu_draws_per_s": round(rate["loop_cpu"], 2),
            "batched_cpu_draws_per_s": round(rate["batched_cpu"], 2),
            "cpu_speedup": round(rate["batched_cpu"] / rate["loop_cpu"], 2), "times": times}


def run(n: int = 50, rounds: int = 3, threads: int = 1) -> dict:
    """Every row and what they ran on."""
    torch.set_num_threads(threads)
    start, t0, load0 = cpu_times(), time.perf_counter(), os.getloadavg()
    rows = [measure(est, kind, n, rounds) for est in ESTIMATORS for kind in STEP_KINDS]
    seconds = time.perf_counter() - t0
    other, load1 = other_cpu_load(start, cpu_times(), seconds), os.getloadavg()
    contended = (other is not None and other >= CONTENDED_LOAD) or max(load0[0], load1[0]) > threads + 1
    return {"rows": rows, "n": n, "rounds": rounds, "threads": threads, "batch_size": DEFAULT_RUN.batch_size,
            "sizes": f"784-{'-'.join(str(h) for h in DEFAULT_RUN.hidden)}-{DEFAULT_RUN.z_dim}",
            "cpu": cpu_name(), "torch": torch.__version__, "pyro": pyro.__version__,
            "python": platform.python_version(), "commit": commit_label(git_commit()), "seconds": round(seconds, 1),
            "other_cpu_load": other, "loadavg_1min": [round(load0[0], 2), round(load1[0], 2)], "contended": contended}


def markdown(result: dict) -> str:
    """The table of ``result`` (:func:`run`) with what it ran on."""
    r = result
    state = (f"**contended**: other processes kept {r['other_cpu_load']} cores busy on average "
             f"(1-minute load {r['loadavg_1min'][0]} -> {r['loadavg_1min'][1]})" if r["contended"] else
             f"uncontended (other processes: {r['other_cpu_load']} cores)")
    lines = ["# Gradient probe: loop vs batched draws", "",
             f"`python -m bench.run.probe_bench`: {r['n']} draws per call, median of {r['rounds']} alternating rounds, "
             f"networks {r['sizes']}, batch {r['batch_size']}, random binary images; {state}.", "",
             "| estimator | step kind | loop draws/s | batched draws/s | speed-up | CPU-time speed-up | n | threads "
             "| CPU | torch | commit |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['estimator']} | {row['step_kind']} | {row['loop_draws_per_s']:.2f} | "
                     f"{row['batched_draws_per_s']:.2f} | {row['speedup']:.2f}x | {row['cpu_speedup']:.2f}x | "
                     f"{row['n']} | {r['threads']} | {r['cpu']} | {r['torch']} | {r['commit']} |")
    lines += ["", "Speed-up: batched draws/s over the loop's (wall time); CPU-time speed-up: the same from "
              "`time.process_time`. On a CPU the products of n draws cost what n products cost: batching saves "
              "the n - 1 calls' Python and Pyro overhead and, where the particles share an input (the encoder's "
              "first layer; enum's enumerated labels), the shared product, and pays for larger tensors that leave "
              "the cache. A speed-up below 1 is batched draws slower than the loop. Where calls are launch-bound "
              "(a GPU) batching is expected to pay most: not measured here. `ssvae/particles.py` says how; every "
              "round is in probe-draws.json.", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = Parser(prog="python -m bench.run.probe_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks", help="folder of the two files")
    ap.add_argument("--draws", type=int, default=50, help="draws per call (default 50)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of each way (default 3)")
    try:
        args = ap.parse_args(argv)
        if args.draws < 2 or args.rounds < 1:
            raise UsageError(f"--draws must be at least 2 and --rounds at least 1 (got {args.draws}, {args.rounds})")
        if not writable(args.out):
            raise UsageError(f"{args.out} cannot be written")
    except UsageError as exc:
        return fail(str(exc))
    result = run(args.draws, args.rounds)
    write_measurement(args.out, "probe-draws", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
