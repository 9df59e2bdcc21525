"""Running one task of a grid: a pure function of its spec, writing one result file.

``run_task(spec, out_dir)`` is what every executor calls, in a fresh process (Pyro's param
store is global). The result file is written atomically when the task ends, whatever the
outcome: ``ok``, ``diverged`` (NaN/inf loss, with the step) or ``failed`` (with the error).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ssvae import RunConfig
from ssvae import data as ssdata
from ssvae import reference
from ssvae.errors import DivergedError
from ssvae.evaluate import EvalPlan
from ssvae.estimators import Objective, get_estimator
from ssvae.flops import Sizes, matmul_rate, step_flops
from ssvae.nvil import NVIL
from ssvae.metrics import (Reference, gradient_report, preserved_param_store, reference_gradient,
                           reference_objective)
from ssvae.train import Trainer, preserved_rng, set_seed, synchronize, train

from .cost import (EVAL_STEPS, PART_STEPS, common_cost, config_epochs, evaluation_epochs, own_probe_cost,
                   train_cost)
from .provenance import cpu_times, device_name, git_commit, host, identity, other_cpu_load, versions
from .regress.peakmem import peak_step_memory
from .schema import ANALOGY_SUFFIX
from .store import atomic_write_bytes, owns, span, write_record

Progress = Optional[Callable[[dict], None]]


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


def _load_data(cfg: RunConfig, data_dir) -> ssdata.SSData:
    return ssdata.load(cfg.labels, cfg.seed, cfg.device, data_dir)


# -- train -----------------------------------------------------------------------------------
def run_train(spec: dict, data_dir, progress: Progress = None, cache_dir: Optional[Path] = None) -> dict:
    cfg = RunConfig.from_dict(spec["config"])
    data = _load_data(cfg, data_dir)
    checkpoints = set(spec.get("checkpoints", []))
    n_samples = spec.get("n_samples", 20)
    kind = get_estimator(cfg.estimator).kind
    rows: List[dict] = []
    probe_batches = _probe_batches(data, cfg.batch_size, spec.get("step_kinds", ("unsup", "sup")))

    def on_step(trainer: Trainer, step: int):
        # The estimator as its run has it: the temperature of this step, the baseline it has trained
        # (restored after every draw: the probe neither resets nor advances it).
        if kind == "ssvae" and step in checkpoints:
            trainer.main.at_step(step)
            refs = _references(trainer, probe_batches, spec.get("reference_draws", 200))
            rows.extend(_variance_rows(trainer.main, trainer, probe_batches, n_samples, refs,
                                       spec.get("bootstrap", 1000), spec.get("draws", "loop"),
                                       estimator=cfg.estimator, aux=cfg.aux,
                                       labels=cfg.labels, seed=cfg.seed, trajectory="own", step=step))

    fault = _fault_hook(spec["id"])

    def hooks(trainer: Trainer, step: int):
        if checkpoints:
            on_step(trainer, step)
        if fault:
            fault(trainer, step)

    out = {"data_sha256": data.sha256}
    try:
        result = train(cfg, data, callback=progress, on_step=hooks if checkpoints or fault else None,
                       evaluation=EvalPlan(**spec.get("evaluation", {})))
    except DivergedError as exc:
        out.update(status="diverged", error=str(exc), diverged_step=exc.step, diverged_epoch=exc.epoch,
                   grad_variance=rows)
        return out
    out.update(status="ok", error=None, metrics=result.metrics, curves=result.curves, grad_variance=rows)
    if kind == "ssvae" and spec.get("samples_per_class"):
        out["samples"] = _save_samples(result.trainer, spec)
    return out


def _save_samples(trainer: Trainer, spec: dict) -> str:
    """Kingma et al.'s analogy figure: one row per class, one z per column: samples/<cell>.analogy.npy (uint8).

    Column j holds the same style z_j ~ N(0, I) under each of the ten labels, so a row shows what
    y controls and a column what z does; z is drawn from a fixed generator, the same for every cell.
    """
    n = spec["samples_per_class"]
    g = torch.Generator().manual_seed(2024)
    digits = torch.arange(10).repeat_interleave(n)
    zs = torch.randn(n, trainer.ss.z_dim, generator=g).repeat(10, 1)  # row i, column j: (y=i, z_j)
    probs = trainer.ss.sample_images(digits, zs=zs).cpu()
    side = int(round(probs.shape[1] ** 0.5))
    img = (probs.reshape(10, n, side, side) * 255).round().to(torch.uint8).numpy()
    rel = f"samples/{spec['id']}{ANALOGY_SUFFIX}"
    spec["_extra_files"] = {rel: img}
    return rel


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
        try:
            data = self._path(step).read_bytes()
        except OSError:
            return None
        head, body = data[:64], data[65:]
        if head.decode("ascii", "replace") == hashlib.sha256(body).hexdigest() and data[64:65] == b"\n":
            return body
        self._path(step).unlink(missing_ok=True)
        return None

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
        body = buf.getvalue()
        try:
            atomic_write_bytes(self._path(step), hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
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


# -- timing probe ----------------------------------------------------------------------------
def time_steps(step: Callable[[], object], warmup: int, n: int, device) -> np.ndarray:
    """Milliseconds of ``n`` calls of ``step`` after ``warmup`` untimed ones (device-synchronised)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times[i] = (time.perf_counter() - t0) * 1e3
    return times


def _summary(ms: np.ndarray, prefix: str = "") -> dict:
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {f"{prefix}median_ms": float(med), f"{prefix}q1_ms": float(q1), f"{prefix}q3_ms": float(q3)}


def _reference_columns(cfg: RunConfig, estimator: str, step_kind: str, xs, ys, spec: dict, sizes,
                       pyro_median_ms: float, matmul_gflops: Optional[float], cache: dict) -> dict:
    """Time the hand-written twin of one Pyro step (``ssvae.reference.pairing``): Pyro's overhead.

    Each reference step kind is timed once per task (``cache``), the first time a Pyro step needs it.

    Empty (None) columns where the step has no exact counterpart: a yardstick is not an overhead.
    """
    ref_kind, exact = reference.pairing(estimator, step_kind)
    out = {"ref_step": None, "ref_median_ms": None, "ref_q1_ms": None, "ref_q3_ms": None,
           "pyro_overhead": None, "gflop": None, "pct_of_matmul_peak": None}
    if not exact:
        return out
    key = (ref_kind, xs.data_ptr())
    if key not in cache:  # the same reference step for every estimator: timed once per task
        cache[key] = time_steps(reference.reference_step(cfg, ref_kind, xs, ys), spec["warmup"], spec["steps"],
                                cfg.device)
    ms = cache[key]
    out.update(ref_step=ref_kind, **_summary(ms, "ref_"))
    gflop = step_flops(ref_kind, xs.shape[0], sizes)["total"] / 1e9
    out.update(gflop=gflop, pyro_overhead=pyro_median_ms / out["ref_median_ms"])
    if matmul_gflops:
        out["pct_of_matmul_peak"] = 100.0 * gflop / (out["ref_median_ms"] / 1e3) / matmul_gflops
    return out


def run_timing(spec: dict, data_dir, progress: Progress = None, cache_dir: Optional[Path] = None) -> dict:
    """Median time of each estimator's Pyro step of each kind, beside its hand-written twin.

    Per row: Pyro's times, the reference step's (same batch, warm-up and step count, timed
    right after Pyro's), their ratio (``pyro_overhead``), the step's dense-layer FLOPs
    (``gflop``, ``ssvae.flops``) and the reference step's achieved rate as a percentage of
    the matmul rate measured at the start of this task (``matmul_gflops``), and the peak
    memory of one more step of Pyro's (``peak_mb``: resident-set growth on CPU, sampled after
    ``malloc_trim``; ``max_memory_allocated`` growth on CUDA; ``bench.regress.peakmem``). On CUDA a
    row also keeps what the process held on the GPU at that step's peak (``cuda_peak_mb``: allocated,
    ``cuda_reserved_mb``: with the allocator's cache), in the record only: how many cells share a GPU
    is planned from it (``bench.executors.plan_gpus``).
    """
    base = RunConfig.from_dict(spec["config"])
    data = _load_data(base, data_dir)
    bs = base.batch_size
    xs_u = data.unsup.x[:bs]
    xs_s, ys_s = data.sup.x[:bs], data.sup.y[:bs]
    matmul = matmul_rate(device=base.device)
    matmul_gflops = float(matmul["gflops_median"])
    rows, ref_cache = [], {}
    for i, est in enumerate(spec["estimators"]):
        # The auxiliary loss is a step of its own: the sup and unsup steps are the same code with or
        # without it, so they are timed once per estimator and reported on the rows of both flags.
        with_aux = True in spec["aux"]
        cfg = RunConfig.from_dict({**base.to_dict(), "estimator": est, "aux": with_aux,
                                   "options": spec.get("options", {}).get(est, {})})
        trainer = Trainer(cfg, data)  # clears the param store: one model at a time
        sizes = Sizes.of(trainer.ss)
        kinds = {"sup": (lambda: trainer.svi.step(xs_s, ys_s), xs_s, ys_s),
                 "unsup": (lambda: trainer.svi.step(xs_u), xs_u, None)}
        if with_aux:
            kinds["aux"] = (lambda: trainer.svi_aux.step(xs_s, ys_s), xs_s, ys_s)
        timed = {}
        for kind, (fn, xs, ys) in kinds.items():
            ms = time_steps(fn, spec["warmup"], spec["steps"], cfg.device)
            mem = peak_step_memory(fn, cfg.device)  # one more step, untimed
            row = {"estimator": est, "device": cfg.device, "step_kind": kind, "batch_size": bs,
                   "n_steps": len(ms), **_summary(ms), "min_ms": float(ms.min()), "mean_ms": float(ms.mean()),
                   "threads": torch.get_num_threads(), "matmul_gflops": matmul_gflops,
                   "peak_mb": mem["peak_mb"], "peak_mb_method": mem["method"]}
            if str(cfg.device).startswith("cuda"):  # since peak_step_memory's reset: that one step's peak
                row["cuda_peak_mb"] = torch.cuda.max_memory_allocated(cfg.device) / 2 ** 20
                row["cuda_reserved_mb"] = torch.cuda.max_memory_reserved(cfg.device) / 2 ** 20
            row.update(_reference_columns(cfg, est, kind, xs, ys, spec, sizes, row["median_ms"], matmul_gflops,
                                          ref_cache))
            timed[kind] = row
        for aux in spec["aux"]:
            for kind in ("sup", "unsup", "aux") if aux else ("sup", "unsup"):
                rows.append({"estimator": est, "aux": aux, **timed[kind]})
        if progress:
            progress({"event": "step", "epoch": 1, "step": i + 1, "steps": len(spec["estimators"]),
                      "global_step": i + 1})
    return {"status": "ok", "error": None, "timing": rows, "matmul": matmul, "data_sha256": data.sha256}


# -- the task kinds ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskKind:
    """One kind of task: how a worker runs its spec, and what it costs.

    ``run(spec, data_dir, progress, cache_dir) -> dict`` returns the record's fields (``status`` among
    them), may call ``progress({"epoch": e, "step": s, "steps": n})`` and may keep what sibling tasks
    can reuse under ``cache_dir`` (``OUT/cache``; never a result); ``cost(spec)`` is a rough size in
    enum-step equivalents (the progress bar's share of the work), ``probe(spec)`` the part of it spent in
    the gradient probe and ``evaluation(spec)`` the epochs of evaluation it runs (:func:`cost_parts` splits
    the cost by them; the ETA and ``bench list`` calibrate each part on this machine's finished tasks);
    ``epochs(spec)`` is how many epochs the progress lines count. A new kind is a runner, one entry here,
    and its spec expansion in ``bench.grid.expand``.
    """
    run: Callable[..., dict]
    cost: Callable[[dict], float]
    epochs: Callable[[dict], int] = lambda spec: 1
    probe: Callable[[dict], float] = lambda spec: 0.0
    evaluation: Callable[[dict], float] = lambda spec: 0.0


KINDS: Dict[str, TaskKind] = {
    "train": TaskKind(run_train, train_cost, config_epochs, own_probe_cost, evaluation_epochs),
    "common": TaskKind(run_common, common_cost, config_epochs, common_cost),
    "timing": TaskKind(run_timing, lambda spec: 60.0),
}


#: the parts of a task's work, each calibrated on its own (:func:`cost_parts`, ``bench.harness``)
PARTS = tuple(PART_STEPS)


def cost_parts(spec: dict) -> Dict[str, float]:
    """A task's cost split into its parts: ``train`` (enum-step equivalents of training, or of whatever
    else the kind does), ``eval`` (epochs of evaluation) and ``probe`` (enum-step equivalents of the
    gradient probe). ``cost = train + EVAL_STEPS * eval + probe``."""
    kind = KINDS[spec["kind"]]
    probe, ev = kind.probe(spec), kind.evaluation(spec)
    return {"train": kind.cost(spec) - probe - EVAL_STEPS * ev, "eval": ev, "probe": probe}


def measured_parts(record: dict) -> Dict[str, float]:
    """Seconds a finished task spent in each part: the cell's own ``train_seconds`` and ``eval_seconds``,
    and the rest of its start-to-end time (:func:`bench.store.span`) in its probe, or in its training
    part where it has no probe."""
    start, end = span(record)
    metrics = record.get("metrics") or {}
    train, ev = float(metrics.get("train_seconds") or 0.0), float(metrics.get("eval_seconds") or 0.0)
    rest = max(0.0, end - start - train - ev)
    probed = KINDS[record["spec"]["kind"]].probe(record["spec"]) > 0
    return {"train": train + (0.0 if probed else rest), "eval": ev, "probe": rest if probed else 0.0}


def run_task(spec: dict, out_dir, data_dir=None, progress: Progress = None, threads: Optional[int] = None,
             token: Optional[str] = None, run_id: Optional[str] = None) -> dict:
    """Run one task and write its result file atomically (:func:`bench.store.write_record`); returns the record.

    The record carries its identity (``provenance.identity``: commit and dirty flag, every installed
    distribution, the sha256 of the four MNIST files, threads, host, CPU, device) and the executor's
    ``token``, by which the executor tells this attempt's record from an older one. A record that was
    not written (a finished one is kept, or ``OUT/.lock`` no longer names ``run_id``) says why in ``not_written``.
    """
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    started, cpu_start, git = time.time(), cpu_times(), git_commit()  # the code this task runs is loaded now
    record = {"id": spec["id"], "kind": spec["kind"], "spec": spec, "config": spec.get("config")}
    try:
        set_seed(0)
        record.update(KINDS[spec["kind"]].run(spec, data_dir, progress, cache_dir=out_dir / "cache"))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded, and the grid goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=8))
    extra = spec.pop("_extra_files", {})
    device = (spec.get("config") or {}).get("device", "cpu")
    try:
        hashes = ssdata.raw_hashes(ssdata.locate_mnist(data_dir, download=False))
    except Exception:  # the data could not be found: the record says so in its error
        hashes = {}
    finished = time.time()  # started/finished (epoch seconds): bench.store.ran_beside finds overlapping tasks
    record.update(seconds=finished - started, started=started, finished=finished,
                  other_cpu_load=other_cpu_load(cpu_start, cpu_times(), finished - started), versions=versions(),
                  threads=torch.get_num_threads(), device_name=device_name(device), host=host(), pid=os.getpid(), token=token,
                  identity=identity(device, torch.get_num_threads(), hashes, git=git))
    if run_id is not None and not owns(out_dir, run_id):  # its run was stopped: write nothing at all
        return {**record, "not_written": f"{out_dir / '.lock'} no longer names run {run_id}"}
    for rel, array in extra.items():
        buf = io.BytesIO()
        np.save(buf, array)
        atomic_write_bytes(out_dir / rel, buf.getvalue())
    why = write_record(out_dir, spec, record, run_id)
    return {**record, "not_written": why} if why else record
