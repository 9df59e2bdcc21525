"""The gradient probe: each estimator's gradient against an exact reference, on its own trajectory or a common one.

A training cell probes its own trajectory at its checkpoints (``bench.run.tasks.run_train`` calls
:func:`_references` and :func:`_variance_rows`); a ``common`` task (:func:`run_common`) follows one
trajectory (enum + aux) and measures every estimator's gradient at the same parameters, training the
estimators' stateful baselines along it (:class:`_BaselineTrainer`) and sharing the trajectory and its
references with sibling probes through an on-disk cache (:class:`_TrajectoryCache`).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import zlib
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ssvae import RunConfig
from ssvae import data as ssdata
from ssvae.errors import DivergedError
from ssvae.evaluate import EvalPlan
from ssvae.estimators import Objective, get_estimator
from ssvae.nvil import NVIL
from ssvae.metrics import (Reference, gradient_report, preserved_param_store, reference_gradient,
                           reference_objective)
from ssvae.train import Trainer, preserved_rng, train

from ..core.provenance import versions
from ..core.store import read_checksummed, write_checksummed
from ..core.taskdata import Progress, _load_data


class _StopTraining(Exception):
    pass


def _probe_batches(data: ssdata.SSData, batch_size: int, step_kinds=("unsup", "sup")):
    """Fixed batches for gradient probes: the first images of a seeded shuffle of each set.

    ``step_kinds`` (a task's ``step_kinds``, both by default) selects the batches probed: on a
    labeled batch y is observed and every estimator computes the same supervised ELBO, so a
    probe pressed for time may measure the unlabeled step alone.
    """
    g = torch.Generator().manual_seed(12345)
    u = torch.randperm(len(data.unsup), generator=g)[:batch_size].to(data.device)
    s = torch.randperm(len(data.sup), generator=g)[:batch_size].to(data.device)
    batches = {"unsup": (data.unsup.x[u],), "sup": (data.sup.x[s], data.sup.y[s])}
    return {k: v for k, v in batches.items() if k in step_kinds}


#: z draws per call of the vectorised reference (a call averages this many enumerated gradients)
REFERENCE_PARTICLES = 20


def _references(trainer: Trainer, batches: dict, draws: int) -> Dict[str, Reference]:
    """The exact reference gradient of each probe batch (``ssvae.metrics.reference_gradient``)."""
    particles = min(REFERENCE_PARTICLES, max(1, draws // 2))
    objective = reference_objective(trainer.ss, particles)
    groups = trainer.ss.param_groups()
    return {kind: reference_gradient(objective, groups, args, max(2, math.ceil(draws / particles)), particles)
            for kind, args in batches.items()}


def _variance_rows(objective: Objective, trainer: Trainer, batches: dict, n: int,
                   references: Optional[Dict[str, Reference]] = None, n_boot: int = 1000, draws: str = "loop",
                   **keys) -> List[dict]:
    """One row per parameter group and step kind: the statistics of ``ssvae.metrics.gradient_stats``.

    ``draws``: the probe's ``draws`` setting, ``"loop"`` (one ``loss_and_grads`` call per draw) or
    ``"batched"`` (vectorised particles where ``ssvae.particles.supports`` the estimator)."""
    rows = []
    groups = trainer.ss.param_groups()
    relax = getattr(objective, "relax", None)
    extra = {"temperature": relax.temperature if relax is not None else None}
    for step_kind, args in batches.items():
        ref = (references or {}).get(step_kind)
        for group, stats in gradient_report(objective, groups, args, n, ref, n_boot=n_boot,
                                            batched=draws == "batched").items():
            rows.append({**keys, "param_group": group, "step_kind": step_kind, **extra, **stats})
    return rows


def _stateful_baseline(objective: Objective, xs: torch.Tensor):
    """What a score-function baseline of ``objective`` keeps between steps, or None.

    ``("nn", module, lr)`` for a neural baseline (trained by the optimiser at ``lr``; None: the
    run's): NVIL's C(x), whose centring and scale statistics also move with each of its steps, or
    a guide's ``infer["baseline"]["nn_baseline"]`` (TraceGraph_ELBO); ``("avg", None, None)`` for
    a decaying average (kept in the param store); None for stateless estimators.
    """
    from pyro import poutine

    if isinstance(objective.loss, NVIL):
        return "nn", objective.loss.baseline, (objective.lr_by_module or {}).get(objective.loss.name)

    with torch.no_grad(), preserved_param_store():
        trace = poutine.trace(objective.guide).get_trace(xs)
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"]:
            opts = (site.get("infer") or {}).get("baseline") or {}
            if opts.get("nn_baseline") is not None:
                return "nn", opts["nn_baseline"], None
            if opts.get("use_decaying_avg_baseline"):
                return "avg", None, None
    return None


class _BaselineTrainer:
    """Train the baselines of the probed estimators along a trajectory they do not drive.

    Before each unlabeled step of the common trajectory, every estimator with a stateful
    baseline takes one gradient estimate on that step's batch: a decaying average takes its
    update (in the param store), a neural baseline one Adam step with the betas of the trajectory and
    the learning rate the estimator's own run gives it (NVIL's ``baseline_lr``, else the run's), as the
    SVI optimiser trains it there; NVIL's centring and scale statistics take their update too. The
    networks' gradients are discarded and the RNG streams restored, so the trajectory is the
    one it would have been without the probe.
    """

    def __init__(self, objectives: Dict[str, Objective], cfg: RunConfig, xs: torch.Tensor, params):
        self.items, self.params, self.updates = [], list(params), 0
        for est, obj in objectives.items():
            kind = _stateful_baseline(obj, xs)
            if kind is None:
                continue
            opt = None
            if kind[0] == "nn":
                lr = kind[2] if kind[2] is not None else cfg.lr
                opt = torch.optim.Adam(kind[1].parameters(), lr=lr, betas=(cfg.beta1, 0.999))
            self.items.append((est, obj, opt))

    def __call__(self, kind: str, xs: torch.Tensor, step: int) -> None:
        if kind != "unsup" or not self.items:
            return
        with preserved_rng():
            torch.manual_seed(1_000_003 + step)
            for _, obj, opt in self.items:
                obj.loss_and_grads(xs)
                if opt is not None:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                for p in self.params:
                    p.grad = None
        self.updates += 1

    def install(self, trainer: Trainer) -> None:
        """Run before each of ``trainer``'s steps, on that step's batch."""
        step = trainer.step

        def step_with_baselines(kind, xs, ys):
            self(kind, xs, trainer.global_step)
            return step(kind, xs, ys)

        trainer.step = step_with_baselines


# -- common-trajectory variance probe --------------------------------------------------------
#: bump when what the trajectory cache holds, or how it is computed, changes
TRAJECTORY_CACHE_VERSION = 2


class _TrajectoryCache:
    """The common trajectory's parameters and reference gradients at each checkpoint, on disk.

    The per-estimator common probes of one (labels, seed) share the same trajectory and the same
    exact reference gradient; the first probe to run writes them (``OUT/cache/common/<key>/step<N>.pt``),
    and a later probe of an estimator without a stateful baseline reads them instead of training
    the trajectory again. ``key`` hashes everything they depend on: the trajectory's config, the
    probe batches' kinds, the reference draws, the data and the torch and pyro versions. The cache
    is a cache: deleting it changes no result (the draws are seeded per checkpoint either way). Each file
    starts with the sha256 of the rest: a file that fails it is deleted and the trajectory trained again.
    """

    def __init__(self, root: Optional[Path], spec: dict, data_sha256: str):
        self.dir = None
        if root is not None:
            what = {"v": TRAJECTORY_CACHE_VERSION, "config": spec["config"], "data": data_sha256,
                    "step_kinds": list(spec.get("step_kinds", ("unsup", "sup"))),
                    "reference_draws": spec.get("reference_draws", 200), "versions": versions()}
            key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
            self.dir = Path(root) / "common" / key

    def _path(self, step: int) -> Optional[Path]:
        return None if self.dir is None else self.dir / f"step{int(step)}.pt"

    def has(self, steps) -> bool:
        return self.dir is not None and all(self._read(s) is not None for s in steps)

    def _read(self, step: int) -> Optional[bytes]:
        """The checkpoint's bytes when its checksum holds; a file that fails it is deleted (None)."""
        return read_checksummed(self._path(step))

    def load(self, step: int):
        blob = torch.load(io.BytesIO(self._read(step)), map_location="cpu", weights_only=True)
        refs = {k: Reference(mean=r["mean"], err=r["err"], draws=r["draws"]) for k, r in blob["refs"].items()}
        return blob["state"], refs

    def save(self, step: int, state: dict, refs: Dict[str, Reference]) -> None:
        if self.dir is None or self._read(step) is not None:
            return
        buf = io.BytesIO()
        torch.save({"state": {k: v.detach().cpu() for k, v in state.items()},
                    "refs": {k: {"mean": {g: t.cpu() for g, t in r.mean.items()}, "err": dict(r.err),
                                 "draws": r.draws} for k, r in refs.items()}}, buf)
        try:
            write_checksummed(self._path(step), buf.getvalue())
        except OSError:  # a cache that cannot be written costs time, not results
            pass


def _checkpoint_seed(cfg: RunConfig, step: int) -> int:
    """The torch seed of a checkpoint's reference (each estimator's draws add their own offset): the
    same whether the trajectory was trained or read from the cache, and whichever estimators share the task."""
    return 7_000_003 + 1_009 * int(step) + int(cfg.seed)


def run_common(spec: dict, data_dir, progress: Progress = None, cache_dir: Optional[Path] = None) -> dict:
    """Every estimator's gradient at the parameters of one trajectory (enum + aux), checkpoint by checkpoint.

    Each estimator's objective is built once, at step 0, and kept: its stateful baseline is
    trained along the trajectory (:class:`_BaselineTrainer`) and its temperature is the one its
    own run has at the checkpoint (``spec["own_options"]`` carries the own runs' schedules). At each
    checkpoint the reference gradient is computed once and every estimator is compared with it.
    The trajectory and the references are shared through :class:`_TrajectoryCache` (``cache_dir``):
    a probe whose estimators keep no state reads them when a sibling probe has written them.
    """
    cfg = RunConfig.from_dict(spec["config"])
    data = _load_data(cfg, data_dir)
    checkpoints = sorted(set(spec["checkpoints"]))
    probe_batches = _probe_batches(data, cfg.batch_size, spec.get("step_kinds", ("unsup", "sup")))
    unsup_xs = _probe_batches(data, cfg.batch_size)["unsup"][0]
    cache = _TrajectoryCache(cache_dir, spec, data.sha256)
    rows: List[dict] = []
    state: dict = {}

    def setup(trainer: Trainer):
        own = {**spec.get("options", {}), **spec.get("own_options", {})}  # the options of each own run
        objectives = {est: get_estimator(est).build(trainer.ss, own.get(est, {})) for est in spec["estimators"]}
        baselines = _BaselineTrainer(objectives, cfg, unsup_xs, trainer.ss.parameters())
        baselines.install(trainer)
        state.update(objectives=objectives, baselines=baselines)

    def measure(trainer: Trainer, step: int, refs=None):
        # The ELBO gradient alone: the auxiliary loss is a separate step with nothing to estimate,
        # so common rows carry aux=False for every estimator.
        with preserved_rng():
            torch.manual_seed(_checkpoint_seed(cfg, step))
            if refs is None:
                refs = _references(trainer, probe_batches, spec.get("reference_draws", 200))
                cache.save(step, trainer.ss.state_dict(), refs)
            for est, objective in state["objectives"].items():
                objective.at_step(step)
                torch.manual_seed(_checkpoint_seed(cfg, step) + 1 + zlib.crc32(est.encode()) % 1_000_003)
                rows.extend(_variance_rows(objective, trainer, probe_batches, spec["n_samples"], refs,
                                           spec.get("bootstrap", 1000), spec.get("draws", "loop"),
                                           estimator=est, aux=False,
                                           labels=cfg.labels, seed=cfg.seed, trajectory="common", step=step,
                                           baseline_updates=state["baselines"].updates))
        if progress:
            progress({"event": "checkpoint", "checkpoint": step, "checkpoints_done": checkpoints.index(step) + 1,
                      "checkpoints": len(checkpoints)})

    def on_step(trainer: Trainer, step: int):
        if not state:
            setup(trainer)
        if step in checkpoints:
            measure(trainer, step, cache.load(step)[1] if cache.has([step]) else None)
            if step >= checkpoints[-1]:
                raise _StopTraining

    out = {"status": "ok", "error": None, "grad_variance": rows, "data_sha256": data.sha256,
           "trajectory": {"estimator": cfg.estimator, "aux": cfg.aux}}
    if cache.has(checkpoints):
        trainer = Trainer(cfg, data)
        setup(trainer)
        if not state["baselines"].items:  # nothing to train along the way: read the trajectory
            for step in checkpoints:
                params, refs = cache.load(step)
                trainer.ss.load_state_dict(params)
                measure(trainer, step, refs)
            return {**out, "trajectory_cache": "read"}
        state.clear()
    try:
        train(cfg, data, callback=progress, on_step=on_step, evaluation=EvalPlan(elbo_images=0, iwae_images=0))
    except _StopTraining:
        pass
    except DivergedError as exc:
        return {"status": "diverged", "error": str(exc), "grad_variance": rows, "data_sha256": data.sha256}
    return {**out, "trajectory_cache": "trained" if cache.dir is not None else None}
