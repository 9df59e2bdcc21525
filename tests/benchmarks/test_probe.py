"""Gradient-probe benchmarks: draws per second of the loop and of batched draws (``ssvae.particles``).

For trace and enum, on the unlabeled (``unsup``) and labeled (``sup``) batch, at the run's sizes
(``bench.run.probe_bench.probe_case``: 784-500-50, a batch of ``DEFAULT_RUN.batch_size``), one call takes
``n = 50`` draws (``draws_per_s`` in ``extra_info``: n over the median round) on the torch threads of
``conftest.py`` (one by default). A measurement, not an assertion: ``python -m bench.run.probe_bench``
writes the committed table (results/benchmarks/probe-draws.md). With benchmarks disabled (the
default), each case takes 2 draws once: a check that it runs.

The extra_info carries no ``impl`` and no ``target_s``: ``bench regress`` leaves these out of its ratios.
"""
import os

import pytest
import torch

from bench.run.probe_bench import ESTIMATORS, STEP_KINDS, draws

N = 50
ROUNDS = int(os.environ.get("REGRESS_ROUNDS", 1 if os.environ.get("REGRESS_SHORT", "") not in ("", "0") else 3))


@pytest.mark.parametrize("way", ["loop", "batched"])
@pytest.mark.parametrize("kind", STEP_KINDS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_probe_draws(benchmark, estimator, kind, way):
    n = 2 if benchmark.disabled else N
    fn = draws(estimator, kind, n, batched=way == "batched")
    if not benchmark.disabled:
        fn()  # warm-up: allocator, Pyro's first trace
    benchmark.extra_info.update({"probe": estimator, "step_kind": kind, "draws": way, "n": n,
                                 "threads": torch.get_num_threads()})
    out = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1)
    if not benchmark.disabled:
        benchmark.extra_info["draws_per_s"] = n / benchmark.stats.stats.median
    assert all(g.shape[0] == n for g in out.values())
