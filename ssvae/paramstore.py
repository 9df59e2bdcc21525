"""Pyro's param store around a gradient measurement: what :mod:`ssvae.metrics` and :mod:`ssvae.particles`
both restore after drawing gradients (a leaf: it imports neither)."""
from __future__ import annotations

import contextlib
from typing import Iterable

import pyro
import torch


def zero_grads(params: Iterable[torch.Tensor]) -> None:
    """Clear ``.grad`` of each parameter (None, not zeros: an optimiser then skips it)."""
    for p in params:
        p.grad = None


@contextlib.contextmanager
def preserved_param_store():
    """Undo what gradient draws leave in Pyro's param store: state an estimator updates as it
    runs (the decaying-average baseline of ``trace-avg``), parameters it creates, and the
    ``.grad`` of parameters outside the measured groups (the neural baseline of ``trace-bx``),
    which the next SVI step would otherwise apply. A baseline trained before the block keeps
    its trained state: the block restores it, it does not reset it."""
    store = pyro.get_param_store()
    state = store.get_state()
    try:
        yield
    finally:
        for name in [n for n in store.keys() if n not in state["params"]]:
            del store[name]
        store.set_state(state)
        zero_grads(p for _, p in store.named_parameters())
