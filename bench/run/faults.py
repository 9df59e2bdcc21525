"""Fault injection for the harness's tests: the ``SSVAE_BENCH_FAULT`` hook a training cell runs at each step.

Never set in real runs; ``tests/test_faults.py`` sets it to make a cell diverge or its worker die.
"""
from __future__ import annotations

import os
import signal
from typing import Callable, Optional

import torch

from ssvae.train import Trainer

#: Fault injection for the harness's tests: ``nan:CELL@STEP`` fills a parameter of that cell with
#: NaN before global step STEP (the loss of that step diverges); ``kill:CELL@STEP`` makes the
#: worker SIGKILL itself there (every attempt). Several, comma-separated. Never set in real runs.
FAULT_ENV = "SSVAE_BENCH_FAULT"


def _fault_hook(cell: str) -> Optional[Callable]:
    faults = {}
    for item in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        what, _, where = item.partition(":")
        target, _, step = where.partition("@")
        if target == cell:
            faults[int(step)] = what
    if not faults:
        return None

    def hook(trainer: Trainer, step: int):
        what = faults.get(step)
        if what == "nan":
            with torch.no_grad():
                next(iter(trainer.ss.parameters())).fill_(float("nan"))
        elif what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
    return hook
