"""Performance regressions: step times checked three ways, recorded per machine.

* ``ab`` -- two sides (git revisions, or Python environments such as two Pyro versions) timed
  round by round in one job; absolute milliseconds compared (``bench.regress.ab``).
* ``run`` / ``save`` / ``compare`` -- paired step-time ratios against a stored per-machine
  baseline (``bench.regress.baseline``), judged only where it fits this machine and these libraries
  (``bench.regress.machine``).
* ``history`` -- every run's record in ``<history dir>/<machine>/`` (``--history-dir``,
  ``$SSVAE_HISTORY_DIR``, else ``results/history``), also as pytest-benchmark JSON, drawn over
  commits (``bench.regress.history``).

``python -m bench regress {run,save,compare,ab,history}``; the parser is ``bench.regress.cli``.
The names below are the baseline check's and its machine's, kept importable as ``bench.regress.<name>``.
"""
from .baseline import (DEFAULT_STAT, DEFAULT_TOLERANCE, INJECT_ENV, baseline_path, check, compare, gemm_rate,
                       load_baseline, paired_ratio, ratios, save, step_times, table, tolerances)
from .machine import machine_info, machine_name, unfit

__all__ = ["DEFAULT_STAT", "DEFAULT_TOLERANCE", "INJECT_ENV", "baseline_path", "check", "compare", "gemm_rate",
           "load_baseline", "machine_info", "machine_name", "paired_ratio", "ratios", "save", "step_times", "table",
           "tolerances", "unfit"]
