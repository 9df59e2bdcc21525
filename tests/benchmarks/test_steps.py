"""Step-time benchmarks: each registered estimator's Pyro step next to the hand-written one.

For every estimator in the registry and every step kind it takes in training (``sup``: the
ELBO step on a labeled batch, ``unsup``: on an unlabeled batch, ``aux``: the auxiliary
classification step), two benchmarks run back to back at the default sizes (batch 200,
784-500-50, random binary images):

* ``pyro``: the training path itself -- ``Trainer.svi.step`` / ``Trainer.svi_aux.step`` of a
  :class:`~ssvae.train.Trainer` built from the estimator's registry entry;
* ``ref``: :class:`~ssvae.reference.ReferenceStepper` (plain PyTorch + ``torch.optim.Adam``)
  on the counterpart objective. An estimator with no hand-written counterpart for its
  unlabeled step is timed against ``unsup-sampled`` (one reference pass of the networks) as a
  yardstick, and marked so. The pairing is ``ssvae.reference.pairing``, the one the harness's
  timing probe (``bench.run.timing_probe.run_timing``) uses too.

``bench.regress`` turns the medians into ratios (Pyro / reference, enum / trace) and compares
them with a stored baseline. Run through it (``make regress``), or directly with
``pytest tests/benchmarks --benchmark-enable``.

Pairing. The machine is shared: another process can take a core for a second and double a
step's time. Ratios of benchmarks timed a minute apart then move by 50% or more from run
to run, so the Pyro benchmark runs one reference step (untimed by pytest-benchmark: its
``setup``) before each timed Pyro step and records both times in ``extra_info``; the ratio
is the median of the per-round ratios, and interference that lasts longer than a step
cancels. ``test_enum_over_trace`` pairs Pyro's enum and trace unlabeled steps the same way.

JIT: ``test_jit_step`` times ``JitTrace_ELBO`` / ``JitTraceEnum_ELBO`` variants of trace and enum
(a failure on the installed torch is an xfail carrying its message).

Rounds: about ``$REGRESS_BUDGET_S`` seconds of steps per benchmark (2 s, or 0.6 s with
``REGRESS_SHORT=1``), at least ``$REGRESS_ROUNDS`` (9, short 5). ``$SSVAE_INJECT_SLOWDOWN``
slows a chosen Pyro step (see ``bench/regress/slowdown.py``).
"""
import os
import time

import pytest
import torch

from bench.regress import slowdown
from ssvae import reference as ref
from ssvae.config import RunConfig
from ssvae.data import SSData, Split
from ssvae.estimators import REGISTRY
from ssvae.flops import step_flops
from ssvae.train import Trainer

SHORT = os.environ.get("REGRESS_SHORT", "") not in ("", "0")
#: seconds of timed work per benchmark (rounds = budget / step time, clamped)
BUDGET_S = float(os.environ.get("REGRESS_BUDGET_S", 0.6 if SHORT else 2.0))
MIN_ROUNDS = int(os.environ.get("REGRESS_ROUNDS", 5 if SHORT else 9))
MAX_ROUNDS = max(MIN_ROUNDS, 20 if SHORT else 60)
WARMUP = int(os.environ.get("REGRESS_WARMUP", 2))
BATCH = 200


def cases():
    out = []
    for name, est in REGISTRY.items():
        kinds = ("sup",) if est.kind == "supervised" else ("sup", "unsup", "aux")
        for kind in kinds:
            for impl in ("pyro", "ref"):
                out.append(pytest.param(name, kind, impl, id=f"{name}-{kind}-{impl}"))
    return out


def synthetic(n=BATCH, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 784, generator=g) > 0.5).float()
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=g), 10).float()
    return Split(x, y)


def synthetic_data() -> SSData:
    """MNIST-shaped random binary data: only the shapes matter for the time of a step."""
    s = synthetic()
    idx = torch.arange(BATCH)
    return SSData(sup=s, unsup=synthetic(seed=1), valid=s, test=s, sup_index=idx, unsup_index=idx,
                  sha256="synthetic", root="")


def pyro_step(trainer: Trainer, kind: str, data: SSData):
    """The training path: the Trainer's own SVI objects (what ``Trainer.step`` calls)."""
    xs, ys, ux = data.sup.x, data.sup.y, data.unsup.x
    if kind == "sup":
        return lambda: trainer.svi.step(xs, ys)
    if kind == "unsup":
        return lambda: trainer.svi.step(ux)
    assert trainer.use_aux
    return lambda: trainer.svi_aux.step(xs, ys)


def reference_step(cfg: RunConfig, ref_kind: str, kind: str, data: SSData):
    """The hand-written step (``ssvae.reference.reference_step``) on the batch Pyro's ``kind`` step sees."""
    xs, ys = (data.unsup.x if kind == "unsup" else data.sup.x), data.sup.y
    return ref.reference_step(cfg, ref_kind, xs, ys)


def timed_list(fn, times):
    def run():
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        return out

    return run


def rounds_for(seconds_per_round: float) -> int:
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_S / max(seconds_per_round, 1e-6))))


def run_paired(benchmark, target, partner, info: dict):
    """Benchmark ``target``; before each round run ``partner`` (untimed by pytest-benchmark).

    Both times go to ``extra_info`` (``target_s``, ``partner_s``), round by round.
    """
    t_target, t_partner = [], []
    for _ in range(0 if benchmark.disabled else WARMUP):  # lazy optimiser state, allocator warm-up
        partner()
        target()
    t0 = time.perf_counter()
    partner()
    target()
    n = rounds_for(time.perf_counter() - t0)
    benchmark.extra_info.update(info)
    benchmark.extra_info.update({"target_s": t_target, "partner_s": t_partner,
                                 "threads": torch.get_num_threads()})
    timed_partner = timed_list(partner, t_partner)

    def setup():  # pytest-benchmark reads a setup's return value as (args, kwargs)
        timed_partner()

    benchmark.pedantic(timed_list(target, t_target), setup=setup, rounds=n, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("estimator,kind,impl", cases())
def test_step(benchmark, estimator, kind, impl):
    cfg = RunConfig(estimator=estimator, aux=True, batch_size=BATCH)
    data = synthetic_data()
    ref_kind, exact = ref.pairing(estimator, kind)
    info = {"estimator": estimator, "step_kind": kind, "impl": impl, "reference": ref_kind,
            "exact_counterpart": exact}
    if impl == "ref":
        step = reference_step(cfg, ref_kind, kind, data)
        for _ in range(0 if benchmark.disabled else WARMUP):
            step()
        t0 = time.perf_counter()
        step()
        benchmark.extra_info.update(info)
        benchmark.extra_info.update({"flops": step_flops(ref_kind, BATCH)["total"],
                                     "threads": torch.get_num_threads()})
        benchmark.pedantic(step, rounds=rounds_for(time.perf_counter() - t0), iterations=1)
        return
    step = pyro_step(Trainer(cfg, data), kind, data)
    partner = reference_step(cfg, ref_kind, kind, data)
    fraction = slowdown.requested(estimator, kind)
    if fraction:
        for _ in range(WARMUP):
            step()
        step = slowdown.slowed(step, fraction)
        info["injected"] = step.injected
    info["flops"] = step_flops(ref_kind, BATCH)["total"] if exact else None
    run_paired(benchmark, step, partner, info)


def test_enum_over_trace(benchmark):
    """Pyro's enumerated unlabeled step, paired with Pyro's sampled one (trace)."""
    if not {"enum", "trace"} <= set(REGISTRY):
        pytest.skip("needs the enum and trace estimators")
    data = synthetic_data()
    enum = pyro_step(Trainer(RunConfig(estimator="enum", aux=True, batch_size=BATCH), data), "unsup", data)
    trace = pyro_step(Trainer(RunConfig(estimator="trace", aux=True, batch_size=BATCH), data), "unsup", data)
    fraction = slowdown.requested("enum", "unsup")
    info = {"pair": "enum/trace", "estimator": "enum", "step_kind": "unsup", "partner": "trace"}
    if fraction:
        for _ in range(WARMUP):
            enum()
        enum = slowdown.slowed(enum, fraction)
        info["injected"] = enum.injected
    run_paired(benchmark, enum, trace, info)


def test_gemm(benchmark):
    """The machine's matmul rate on a step-shaped GEMM, (2000 x 794) @ (794 x 500)."""
    m, k, n = 2000, 794, 500
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    benchmark.extra_info.update({"gemm_shape": [m, k, n], "flops": 2 * m * k * n,
                                 "threads": torch.get_num_threads()})
    benchmark.pedantic(lambda: torch.mm(a, b, out=out), rounds=max(MIN_ROUNDS, 10), iterations=1)


#: Pyro's JIT-compiled losses, as the Pyro example's ``--jit`` uses them
JIT_LOSSES = {"trace": "JitTrace_ELBO", "enum": "JitTraceEnum_ELBO"}


@pytest.mark.parametrize("estimator,kind", [("trace", "sup"), ("trace", "unsup"), ("trace", "aux"),
                                            ("enum", "sup"), ("enum", "unsup")],
                         ids=["trace-jit-sup", "trace-jit-unsup", "trace-jit-aux", "enum-jit-sup", "enum-jit-unsup"])
def test_jit_step(benchmark, estimator, kind):
    """The JIT variant of a Pyro step (``JitTrace_ELBO`` / ``JitTraceEnum_ELBO``; the aux step with
    ``JitTrace_ELBO``), paired with the reference step like the others; reported as estimator
    ``<name>-jit`` (its ratios have no baseline until one is saved with them).

    Where the JIT fails on the installed torch (tracing, compilation or the first steps raise),
    the failure and its message are this benchmark's result: an xfail naming the loss, the torch
    version and the error, not an error of the suite. ``bench regress ab`` records the same as a
    row with status ``failed``.
    """
    from pyro import infer

    cfg = RunConfig(estimator=estimator, aux=True, batch_size=BATCH)
    data = synthetic_data()
    trainer = Trainer(cfg, data)
    if kind == "aux":
        svi = infer.SVI(trainer.aux.model, trainer.aux.guide, trainer.optim, loss=infer.JitTrace_ELBO())
        step = lambda: svi.step(data.sup.x, data.sup.y)  # noqa: E731
    else:
        loss = getattr(infer, JIT_LOSSES[estimator])(max_plate_nesting=1)
        svi = infer.SVI(trainer.main.model, trainer.main.guide, trainer.optim, loss=loss)
        step = (lambda: svi.step(data.sup.x, data.sup.y)) if kind == "sup" else (lambda: svi.step(data.unsup.x))
    try:
        for _ in range(WARMUP):  # the first call traces and compiles
            step()
    except Exception as exc:
        pytest.xfail(f"{JIT_LOSSES[estimator] if kind != 'aux' else 'JitTrace_ELBO'} fails on torch "
                     f"{torch.__version__}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    ref_kind, exact = ref.pairing(estimator, kind)
    info = {"estimator": f"{estimator}-jit", "step_kind": kind, "impl": "pyro", "reference": ref_kind,
            "exact_counterpart": exact, "jit": True, "flops": step_flops(ref_kind, BATCH)["total"]}
    run_paired(benchmark, step, reference_step(cfg, ref_kind, kind, data), info)
