"""What every task runner shares: the callback it reports progress to and the data it loads.

``_load_data`` is the one place a runner (``bench.run.tasks.run_train``, ``bench.run.gradient_probe.run_common``,
``bench.run.timing_probe.run_timing``) reads MNIST; tests replace it, in the runner's module, with synthetic data.
"""
from __future__ import annotations

from typing import Callable, Optional

from ssvae import RunConfig
from ssvae import data as ssdata

Progress = Optional[Callable[[dict], None]]


def _load_data(cfg: RunConfig, data_dir) -> ssdata.SSData:
    return ssdata.load(cfg.labels, cfg.seed, cfg.device, data_dir)
