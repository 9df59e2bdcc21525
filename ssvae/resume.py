"""Resuming a run cut short: the pieces of a run's state that are not the trainer's own.

:func:`ssvae.train.train` hands its ``on_epoch_end`` a state after every finished epoch and continues from
one given as ``resume``; this module holds what that needs besides :meth:`ssvae.train.Trainer.state_dict`:
the global RNG streams (:func:`rng_states`), copies of live tensors that load anywhere (:func:`copied`),
parameter constraints saved by name (so that ``torch.load(weights_only=True)`` reads a state), and the check
that a state continues this very run (:func:`check_resume`).
"""
from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import numpy as np
import pyro
import torch
from pyro.params.param_store import module_from_param_with_module_name
from torch.distributions import constraints, transform_to

from .config import RunConfig
from .data import SSData
from .evaluate import EvalPlan


def rng_states(device) -> dict:
    """The global RNG streams a run draws from: torch's (CUDA's too on a CUDA device), and Python's and numpy's,
    which :func:`set_seed` seeds (nothing in training draws from them; saved so that a resumed process is
    the uninterrupted one in every stream). numpy's key array travels as a tensor (``torch.load`` with
    ``weights_only`` reads it)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.device(device).type == "cuda" else None,
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}


def set_rng_states(states: dict) -> None:
    """Put back what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None:
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def copied(obj: Any) -> Any:
    """``obj`` with every tensor detached, cloned and on the CPU: a state that later steps do not change
    (Pyro's and Adam's ``get_state`` hand out the live tensors) and that loads on any machine."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: copied(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copied(v) for v in obj)
    return obj


#: torch's named constraints (``constraints.real`` ...), by object: a saved state names a parameter's
#: constraint rather than pickling it, so that it loads with ``torch.load(weights_only=True)``
CONSTRAINTS = {name: c for name, c in vars(constraints).items() if isinstance(c, constraints.Constraint)}


def constraint_name(c) -> str:
    if isinstance(c, type(constraints.real)):  # Pyro compares real constraints by type (ParamStoreDict.set_state)
        return "real"
    for name, known in CONSTRAINTS.items():
        if known is c:
            return name
    raise ValueError(f"cannot save a parameter constrained to {c!r}: not one of torch's named constraints")


#: bump when what a resume state holds changes: a state of another version is refused
RESUME_VERSION = 1


def same(a, b) -> bool:
    """Equal as JSON (a config read back from a file may hold lists where ``to_dict`` has tuples)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def check_resume(state: dict, cfg: RunConfig, data: SSData, evaluation: EvalPlan = EvalPlan()) -> None:
    """Raise ``ValueError`` unless ``state`` (handed to ``train``'s ``on_epoch_end``) continues this very run:
    the same version of the state, config, data and evaluation plan, and an epoch within the run."""
    if not isinstance(state, dict) or state.get("version") != RESUME_VERSION:
        raise ValueError(f"not a resume state of version {RESUME_VERSION}")
    problems = [what for what, ok in (("config", same(state.get("config"), cfg.to_dict())),
                                      ("data", state.get("data_sha256") == data.sha256),
                                      ("evaluation plan", same(state.get("evaluation"),
                                                                dataclasses.asdict(evaluation))))
                if not ok]
    epoch = state.get("epoch")
    if not (isinstance(epoch, int) and 1 <= epoch <= cfg.epochs):
        problems.append(f"epoch ({epoch!r} of {cfg.epochs})")
    if problems:
        raise ValueError(f"the resume state is another run's: its {', '.join(problems)} differ")


def trainer_state(trainer) -> dict:
    """:meth:`ssvae.train.Trainer.state_dict`: what the trainer's next step depends on, copied."""
    store = pyro.get_param_store().get_state()
    optimizer = {**getattr(trainer.optim, "_state_waiting_to_be_consumed", {}), **trainer.optim.get_state()}
    return copied({
        "global_step": trainer.global_step,
        "param_store": {"params": dict(store["params"]),
                        "constraints": {n: constraint_name(c) for n, c in store["constraints"].items()}},
        "optimizer": optimizer,
        "shuffle": trainer.shuffle.get_state(),
        "objective": trainer.main.state_dict(),
    })


def load_trainer_state(trainer, state: dict) -> None:
    """:meth:`ssvae.train.Trainer.load_state_dict`: put :func:`trainer_state`'s state into a fresh trainer."""
    saved, names = state["param_store"]["params"], state["param_store"]["constraints"]
    modules = trainer.pyro_modules()
    wanted = {module_from_param_with_module_name(n) for n in saved} - set(saved)  # network names only
    if wanted - set(modules):
        raise ValueError(f"the saved param store holds networks this run does not have: "
                         f"{sorted(wanted - set(modules))}")
    for name, module in modules.items():
        if name in wanted:
            pyro.module(name, module)
    store = pyro.get_param_store()
    for name, value in saved.items():
        if name not in store:
            constraint = CONSTRAINTS[names[name]]
            store.setdefault(name, transform_to(constraint)(value.detach().to(trainer.data.device, copy=True)),
                             constraint)
    live = dict(store.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():  # the unconstrained value itself: no round trip through a transform
            live[name].copy_(value)
    trainer.optim.set_state(state["optimizer"])
    trainer.shuffle.set_state(state["shuffle"])
    trainer.main.load_state_dict(state["objective"])
    trainer.global_step = int(state["global_step"])
