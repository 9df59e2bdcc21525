"""Running a grid: ``python -m bench run`` and ``python -m bench train``.

A preset and its overrides become a :class:`~.grid.Grid` (:mod:`.grid`, tuning's candidates in
:mod:`.tune`), which expands into task specs, each a pure function of its spec; :mod:`.harness` skips what
is done, prices the rest (:mod:`.cost`, :mod:`.estimate`), and hands the rest to an executor
(:mod:`.executors`: local processes through :mod:`.launch`, or Dask; GPU slots by :mod:`.gpu_plan`), whose
workers (:mod:`.worker`) run one task kind each (:mod:`.tasks`: training cells, :mod:`.gradient_probe`,
:mod:`.timing_probe`; injected faults in :mod:`.faults`) while :mod:`.progress` draws the progress line.
:mod:`.train_cmd` trains one configuration; :mod:`.probe_bench` measured the probe's draws once,
:mod:`.denormal_bench` the seconds per epoch with and without subnormal floats flushed.
Imports :mod:`bench.core` and the command table, never the analyses or the report.
"""
