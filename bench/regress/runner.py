"""One side of an A/B: a long-lived process that times step benchmarks when asked.

``bench.regress.ab`` starts one runner per side, each with that side's Python, working
directory and ``PYTHONPATH`` (a git worktree of the base revision, or an overlay with
another Pyro), and asks them for rounds in turn (A, B, A, B, ...): both sides see the same
minutes of the shared machine. The runner is this file, run as a script
(``python runner.py --root SIDE_ROOT``); it imports ``ssvae`` from ``SIDE_ROOT`` (its stable
API only: ``RunConfig``, ``Trainer``, ``SSData``/``Split``, the estimator registry and
``ssvae.reference``), and ``bench/core/peakmem.py`` and ``bench/regress/slowdown.py`` from its own checkout by path,
so both sides are timed by the same code.

A case is ``ESTIMATOR:KIND`` (the Trainer's own SVI step, as in training), ``trace-jit:KIND``
/ ``enum-jit:KIND`` (the same with Pyro's ``JitTrace_ELBO`` / ``JitTraceEnum_ELBO``, as the
Pyro example's ``--jit``), or ``ref:REF_KIND`` (the hand-written PyTorch step of
``ssvae.reference``: it sees torch regressions without Pyro). Sizes: batch 200, 784-500-50,
random binary images (only shapes matter for time). A case that cannot be built or whose
warm-up raises (a JIT failing on the installed torch, an estimator the side does not have)
is reported with status ``failed`` / ``missing`` and its message, and not timed.

Each case keeps its own Pyro param store (swapped in before its steps): Pyro's store is
global, and a JIT-compiled loss looks its parameters up by name.

Protocol: one JSON object per line on stdin, one JSON line back on the original stdout
(whatever the libraries print goes to stderr)::

    {"cmd": "setup", "cases": [...], "warmup": 2, "threads": 1}
        -> {"cases": {case: {"status", "error", "peak_mb", "mem_method"}}, "versions": {...}}
    {"cmd": "round", "reps": 1, "min_ms": 60}  -> {"ms": {case: [ms, ...]}, "failed": {case: message}}
        (each ok case: at least ``reps`` steps and at least ``min_ms`` of them, at most 20)
    {"cmd": "quit"}
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="the side's checkout: ssvae is imported from here")
    return p


if __name__ == "__main__":  # the side's checkout, not this file's folder, first on sys.path: the side's ssvae below
    sys.path[0] = str(Path(_parser().parse_args().root).resolve())

import pyro  # noqa: E402  (after the side's path)
import torch  # noqa: E402
from pyro import infer  # noqa: E402


def _message(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[:3])[:400]


# The side's ssvae (its stable API). A side that lacks a module fails the cases that need it, with the
# import's message as their status, never the runner: SIDE_MISSING / REFERENCE_MISSING hold that message.
try:
    from ssvae.config import RunConfig
    from ssvae.data import SSData, Split
    from ssvae.estimators import REGISTRY
    from ssvae.train import Trainer
    SIDE_MISSING = None
except ImportError as exc:  # pragma: no cover - an old side
    SIDE_MISSING = _message(exc)
try:
    from ssvae import reference
    REFERENCE_MISSING = None
except ImportError as exc:  # pragma: no cover - a side from before ssvae.reference
    REFERENCE_MISSING = _message(exc)

BATCH = 200
HERE = Path(__file__).resolve().parent
MAX_REPS = 20
#: peak memory: the median over this many steps, each measured on its own (after warm-up)
MEM_STEPS = 3
JIT_LOSSES = {"trace": "JitTrace_ELBO", "enum": "JitTraceEnum_ELBO"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"_regress_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def synthetic(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(BATCH, 784, generator=g) > 0.5).float()
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (BATCH,), generator=g), 10).float()
    return Split(x, y)


def synthetic_data():
    if SIDE_MISSING:
        raise LookupError(f"this side's ssvae: {SIDE_MISSING}")
    s = synthetic(0)
    idx = torch.arange(BATCH)
    return SSData(sup=s, unsup=synthetic(1), valid=s, test=s, sup_index=idx, unsup_index=idx,
                  sha256="synthetic", root="")


class Case:
    """One benchmark: a zero-argument step and the param store it runs against."""

    def __init__(self, name: str, data):
        self.name = name
        self.saved = None
        est, _, kind = name.partition(":")
        xs, ys, ux = data.sup.x, data.sup.y, data.unsup.x
        if est == "ref":
            if REFERENCE_MISSING:
                raise LookupError(f"no ssvae.reference on this side: {REFERENCE_MISSING}")
            batch_x = ux if kind.startswith("unsup") else xs
            self.step = reference.reference_step(RunConfig(batch_size=BATCH), kind, batch_x, ys)
            return
        base = est[:-4] if est.endswith("-jit") else est
        if base not in REGISTRY or (est.endswith("-jit") and base not in JIT_LOSSES):
            raise LookupError(f"no estimator {est!r} on this side")
        trainer = Trainer(RunConfig(estimator=base, aux=True, batch_size=BATCH), data)
        store = pyro.get_param_store()  # Trainer() gave the store new dicts: this case's, from now on
        self.saved = (store._params, store._param_to_name, store._constraints)
        svi, svi_aux = trainer.svi, getattr(trainer, "svi_aux", None)
        if est.endswith("-jit"):
            loss = getattr(infer, JIT_LOSSES[base])(max_plate_nesting=1)
            svi = infer.SVI(trainer.main.model, trainer.main.guide, trainer.optim, loss=loss)
            if svi_aux is not None:
                svi_aux = infer.SVI(trainer.aux.model, trainer.aux.guide, trainer.optim, loss=infer.JitTrace_ELBO())
        if kind == "sup":
            self.step = lambda: svi.step(xs, ys)
        elif kind == "unsup":
            self.step = lambda: svi.step(ux)
        elif kind == "aux" and svi_aux is not None:
            self.step = lambda: svi_aux.step(xs, ys)
        else:
            raise LookupError(f"estimator {base!r} has no {kind!r} step")

    def activate(self):
        """Make this case's params the global param store's."""
        if self.saved is None:
            return
        store = pyro.get_param_store()
        store._params, store._param_to_name, store._constraints = self.saved


class Runner:
    def __init__(self):
        self.cases = {}
        self.peakmem = _load("peakmem", HERE.parent / "core" / "peakmem.py")
        self.slowdown = _load("slowdown", HERE / "slowdown.py")

    def setup(self, cases, warmup: int = 2, threads: int = 1) -> dict:
        if threads > 0:
            torch.set_num_threads(threads)
        data = synthetic_data()
        out = {}
        for name in cases:
            try:
                case = Case(name, data)
                case.activate()
                for _ in range(warmup):
                    case.step()
                est, _, kind = name.partition(":")
                fraction = self.slowdown.requested(est, kind)
                injected = None
                if fraction:
                    case.step = self.slowdown.slowed(case.step, fraction)
                    injected = case.step.injected
                mems = sorted(self.peakmem.peak_step_memory(case.step)["peak_mb"] for _ in range(MEM_STEPS))
                mem = {"peak_mb": mems[len(mems) // 2], "method": self.peakmem.peak_step_memory(lambda: None)["method"]}
                self.cases[name] = case
                out[name] = {"status": "ok", "error": None, "peak_mb": mem["peak_mb"], "mem_method": mem["method"],
                             "injected": injected}
            except LookupError as exc:
                out[name] = {"status": "missing", "error": _message(exc)}
            except Exception as exc:  # recorded as the benchmark's result
                traceback.print_exc(limit=4, file=sys.stderr)
                out[name] = {"status": "failed", "error": _message(exc)}
        return {"cases": out, "versions": _versions(), "threads": torch.get_num_threads()}

    def round(self, reps: int = 1, min_ms: float = 0.0) -> dict:
        ms, failed = {}, {}
        for name, case in list(self.cases.items()):
            case.activate()
            times = []
            try:
                while len(times) < reps or (sum(times) < min_ms and len(times) < MAX_REPS):
                    t0 = time.perf_counter()
                    case.step()
                    times.append((time.perf_counter() - t0) * 1e3)
            except Exception as exc:
                failed[name] = _message(exc)
                del self.cases[name]
                continue
            ms[name] = times
        return {"ms": ms, "failed": failed}


def _versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__}


def main() -> int:
    _parser().parse_args()  # --root: already first on sys.path (above)
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints go to stderr
    sys.stdout = sys.stderr
    runner = Runner()
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            break
        try:
            out = runner.setup(**msg) if cmd == "setup" else runner.round(**msg)
        except Exception as exc:
            out = {"error": _message(exc)}
        reply.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
