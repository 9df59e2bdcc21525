"""Tuning at the reporting budget: a successive-halving search over each variant's options (Optuna).

A preset with a ``[search]`` table is a search, run with ``python -m bench search --preset P --out OUT``
(``bench run`` refuses it). For every setting of its grid (estimator x aux x label count; no baseline)
it runs ``trials`` trials. A trial is one combination of values, trained on every seed of the grid
(at least 3) to the grid's ``epochs``, the budget the references report at; after each epoch the mean
over seeds of each seed's best validation accuracy so far (:func:`objective_so_far`: the trial's value, had it
stopped there) goes to an asynchronous successive-halving pruner
(:class:`optuna.pruners.SuccessiveHalvingPruner`: at the rungs ``first_rung`` x ``reduction``^k epochs a
trial outside the best 1/``reduction`` of those that reached the rung stops). The values come from
Optuna's TPE sampler (seeded); the first trial of every setting is the default (the grid's learning
rate and the estimator's default options), so the study can say what tuning gained over it::

    [search]
    trials = 16                      # per setting
    lr = {low = 3e-5, high = 3e-3}   # a table with low and high: a range (log scale)
    first_rung = 2                   # epochs before the first pruning decision
    reduction = 3
    [search.rloo]
    k = [2, 5, 10, 20]               # a list: the candidates (an estimator's default: its record's ``search``)

Keys are ``lr``, ``aux_multiplier`` (settings with aux only) or an option of the estimator's record.
Only validation accuracy is read: the per-epoch test accuracy the training loop computes is neither
reported to the pruner nor written. Each trial writes one record per seed,
``OUT/runs/<cell>_t<trial>.json``, in the form :mod:`bench.report.tune_study` reads (status ``ok``, or
``pruned`` / ``diverged``: not eligible), so ``python -m bench tune OUT`` chooses, tabulates and plots a
search as it does a tuning grid. Optuna's journal, ``OUT/search.journal``, is the search's state: a rerun
of the same command continues it (a trial cut short by a kill is tried again from its first epoch).
Seeds advance one epoch at a time, each resumed from its state (:func:`ssvae.train.train`'s
``resume``), so a trial's numbers are those of uninterrupted runs.

A choice on an edge of its range asks for a wider range: give the estimator its own wider table
(``[search.gumbel] lr = {low = 4.2e-5, high = 4.2e-2}``) and rerun the same command on the same folder. A
space that contains the folder's is a widening (env.json keeps the earlier spaces under ``widened``): the
setting's study goes on with ``trials`` more trials drawn from the wider space, its sampler seeing every
earlier trial. Any other change of space is another search, refused.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import optuna
import torch
from filelock import FileLock, Timeout
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ssvae import data as ssdata
from ssvae.errors import ConfigError, DivergedError
from ssvae.evaluate import EvalPlan
from ssvae.train import train

from ..commands import COMMANDS
from ..core.errors import add_data_args
from ..core.numerics import flush_denormals
from ..core.provenance import commit_label, git_commit, usable_cpus
from ..core.schema import Folder, grid_union, setting_id
from ..core.store import OutputLock, atomic_write_json
from ..core.taskdata import _load_data
from . import grid as gridmod
from .harness import add_grid_args, earlier_runs, folder_provenance, grid_from_args
from .launch import die_with_parent
from .tune import RUN_FIELDS, encode, default_params, values_of

JOURNAL = Folder.JOURNAL
#: what a diverged trial reports to the sampler: below any accuracy (its records say diverged: not eligible)
DIVERGED_VALUE = 0.0
#: the per-epoch evaluation of a trial: validation (and test) accuracy only, no ELBO, no final bound
EVALUATION = EvalPlan(elbo_images=0, iwae_images=0)
#: how long a command waits for a setting's lock (held for moments by a command taking its next trial)
GATE_TIMEOUT = 120.0
#: apart the sampler seeds of the processes searching one setting at once
WORKER_SEED_STRIDE = 10_007


def distributions(space: Dict) -> Dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distribution of each key (a table candidate is named by its JSON text)."""
    out = {}
    for key, (kind, *rest) in space.items():
        if kind == "range":
            lo, hi = rest
            ints = isinstance(lo, int) and isinstance(hi, int) and key not in RUN_FIELDS
            out[key] = IntDistribution(lo, hi, log=True) if ints else FloatDistribution(float(lo), float(hi), log=True)
        else:
            out[key] = CategoricalDistribution([encode(v) for v in rest[0]])
    return out


# -- running a search ----------------------------------------------------------------------------
class _Pause(Exception):
    def __init__(self, state: dict):
        super().__init__("epoch done")
        self.state = state


class _TrialFailed(Exception):
    """A trial that raised (a fault, or a bug one set of values meets): recorded ``failed``, logged, and told to
    the study as failed; the search goes on with its next trial."""


def _suggest(trial: optuna.Trial, key: str, dist):
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)


def _one_epoch(cfg, data, state: Optional[dict]) -> dict:
    """Train ``cfg`` one epoch further than ``state`` (None: from the start); the new state."""
    def pause(new_state):
        raise _Pause(new_state)
    try:
        train(cfg, data, evaluation=EVALUATION, resume=state, on_epoch_end=pause)
    except _Pause as p:
        return p.state
    raise RuntimeError(f"{cfg.estimator}: training ended without finishing an epoch")


def trial_config(grid: gridmod.Grid, est: str, aux: bool, labels: int, seed: int, values: Dict):
    extra = {k: v for k, v in values.items() if k != "aux_multiplier"}
    cfg = gridmod._config(grid, extra, estimator=est, aux=aux, labels=labels, seed=seed)
    if "aux_multiplier" in values:
        cfg = dataclasses.replace(cfg, aux_multiplier=float(values["aux_multiplier"]))
    return cfg


_CURVE_KEYS = ("epoch", "valid_acc", "loss_sup", "loss_unsup", "loss_aux", "elapsed_seconds", "global_step")


def _record(cfg, trial_number: int, name: str, values: Dict, space: Dict, status: str, state: Optional[dict],
            commit: str) -> dict:
    curves = [{k: row[k] for k in _CURVE_KEYS} for row in (state or {}).get("curves", [])]
    valid = [row["valid_acc"] for row in curves]
    best = max(range(len(valid)), key=lambda i: (valid[i], -i)) if valid else None
    metrics = {"best_valid_acc": valid[best] if valid else None, "best_epoch": best + 1 if valid else None,
               "epochs_run": len(curves), "final_valid_acc": valid[-1] if valid else None}
    return {"id": f"{gridmod.cell_id(cfg)}_t{trial_number:03d}", "kind": "train", "status": status,
            "config": cfg.to_dict(), "metrics": metrics, "curves": curves,
            "search": {"study": name, "trial": trial_number, "values": values, "space": space},
            "git_commit": commit}


def objective_so_far(curves) -> float:
    """The trial's value so far: the mean over seeds of each seed's best validation accuracy (``curves``: a list
    of epoch rows per seed). The pruner sees it after each epoch and the trial returns it at the end, so a run
    that peaks early and then falls (the relaxations at 100 labels in Pyro's setting) keeps its peak."""
    return sum(max(row["valid_acc"] for row in c) for c in curves) / len(curves)


def _objective(grid, est, aux, labels, datasets, dists, space: Dict, out: Path, commit: str, log):
    name = setting_id(est, aux, labels)

    def objective(trial: optuna.Trial) -> float:
        flushed = flush_denormals()  # as every task: see bench.core.numerics
        params = {k: _suggest(trial, k, d) for k, d in dists.items()}
        values = values_of(params)
        cfgs = {s: trial_config(grid, est, aux, labels, s, values) for s in grid.seeds}
        states: Dict[int, Optional[dict]] = {s: None for s in grid.seeds}
        status, error = "ok", None
        try:
            for epoch in range(1, grid.epochs + 1):
                for s in grid.seeds:
                    states[s] = _one_epoch(cfgs[s], datasets[s], states[s])
                trial.report(objective_so_far([states[s]["curves"] for s in grid.seeds]), epoch)
                if epoch < grid.epochs and trial.should_prune():
                    status = "pruned"
                    break
        except DivergedError:
            status = "diverged"
        except Exception as exc:  # noqa: BLE001 (one trial's fault: recorded, and the search goes on)
            status, error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        recs = [{**_record(cfgs[s], trial.number, name, values, space, status, states[s], commit),
                 "flush_denormal": flushed, **({"error": error} if error else {})} for s in grid.seeds]
        for rec in recs:
            atomic_write_json(Folder(out).runs / f"{rec['id']}.json", rec)
        trial.set_user_attr("status", status)
        epochs = min(r["metrics"]["epochs_run"] for r in recs)
        log(f"search: {name} trial {trial.number}: {status} after {epochs} epoch(s) "
            f"({', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in values.items())})"
            + (f": {error}" if error else ""))
        if status == "failed":
            raise _TrialFailed(error)
        if status == "pruned":
            raise optuna.TrialPruned()
        if status == "diverged":
            # the worst value, not a failure: the sampler learns the region diverges (a failed trial teaches it
            # nothing, and it kept proposing learning rates that diverge); its records stay not eligible
            return DIVERGED_VALUE
        return objective_so_far([states[s]["curves"] for s in grid.seeds])

    return objective


def _study(storage, name: str, spec: Dict, worker: int = 0, parallel: bool = False) -> optuna.Study:
    """The setting's study, created or continued. Its sampler is seeded by the search's seed plus the trials the
    study already holds: a continued search draws on from there (a sampler seeded as at the start would propose
    its first values again: a search cut by the end of a session repeated its early trials). ``worker``: the
    index of one of several processes searching the setting at once (each its own seed); ``parallel``: the
    sampler then treats the others' running trials as done at a poor value (TPE's constant liar), so that they
    do not propose the same region."""
    study = optuna.create_study(
        study_name=name, storage=storage, load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=spec["seed"]),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=spec["first_rung"],
                                                      reduction_factor=spec["reduction"]))
    held = len(study.get_trials(deepcopy=False))
    if held or worker or parallel:
        study.sampler = optuna.samplers.TPESampler(seed=spec["seed"] + held + WORKER_SEED_STRIDE * worker,
                                                   constant_liar=parallel)
    return study


def _resume(study: optuna.Study, dists: Dict, alive: Callable[[int], bool] = lambda number: False
            ) -> Tuple[int, int, int]:
    """Trials cut short by a kill (RUNNING, and not ``alive``: no process holds their lock) are marked failed and
    queued again; returns how many trials are done (complete, pruned, diverged or failed with a record) drawn
    from ``dists`` (the current space: a widened one starts again at 0), how many from earlier spaces, and how
    many of the current space are running in another process."""
    running = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if alive(t.number):
            running += t.distributions == dists or not t.distributions
            continue
        study._storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, skip_if_exists=False)
    done = [t.distributions == dists for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            # diverged (told as failed before diverged trials returned the worst value), or failed with a record:
            # a trial that raised counts, so that an error every trial meets cannot run trials for ever
            or (t.state == TrialState.FAIL and t.user_attrs.get("status") in ("diverged", "failed"))]
    return sum(done), len(done) - sum(done), running


def _trial_lock(out: Path, name: str, number: int) -> FileLock:
    """Held by the process running trial ``number`` of setting ``name``: a RUNNING trial whose lock is free was
    cut short by a kill (the lock goes with the process)."""
    return FileLock(str(out / f".search-{name}-t{number:03d}.lock"))


def _alive(out: Path, name: str) -> Callable[[int], bool]:
    def alive(number: int) -> bool:
        lock = _trial_lock(out, name, number)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False
    return alive


def _run_setting(storage, grid: gridmod.Grid, spec: Dict, est: str, aux: bool, labels: int, out: Path, data_dir,
                 commit: str, log, worker: int = 0, parallel: bool = False) -> int:
    """Run the setting's trials until ``trials`` are done or running: one process of ``workers`` (``worker``: its
    index). Counting the trials, queueing again those cut short and taking the next happen under the setting's
    lock, ``OUT/.search-<setting>.lock`` (held for moments); a trial runs under its own lock."""
    name = setting_id(est, aux, labels)
    space = {k: v for k, v in spec["space"][est].items() if aux or k != "aux_multiplier"}
    dists = distributions(space)
    gate = FileLock(str(out / f".search-{name}.lock"))
    try:
        gate.acquire(timeout=GATE_TIMEOUT)
    except Timeout:
        log(f"search: {name}: another command holds its lock: skipped")
        return 0
    try:
        study = _study(storage, name, spec, worker, parallel)
        done, earlier, running = _resume(study, dists, _alive(out, name))
        if not study.get_trials(deepcopy=False):
            first = default_params(space, est, grid.lr, grid.aux_multiplier)
            if first is not None:
                study.enqueue_trial(first)
    finally:
        gate.release()
    todo = spec["trials"] - done - running
    if todo <= 0:
        if worker == 0:
            log(f"search: {name}: {done} of {spec['trials']} trials done" + (f", {running} running" if running else ""))
        return 0
    datasets = {s: _load_data(trial_config(grid, est, aux, labels, s, {}), data_dir) for s in grid.seeds}
    if worker == 0:
        log(f"search: {name}: {todo} trial(s) to run ({done} done" + (f"; {earlier} over an earlier, narrower space"
                                                                         if earlier else "")
            + (f"; {running} running in another command" if running else "")
            + f"), {len(grid.seeds)} seeds x {grid.epochs} epochs each")
    objective = _objective(grid, est, aux, labels, datasets, dists, spec["space"][est], out, commit, log)
    ran = 0
    while True:
        with gate:
            done, _, running = _resume(study, dists, _alive(out, name))
            if done + running >= spec["trials"]:
                return ran
            trial = study.ask()  # a trial queued again (or the default) first
            lock = _trial_lock(out, name, trial.number)
            lock.acquire(timeout=0)
        try:
            _tell(study, trial, objective)
        finally:
            lock.release()
        ran += 1


def _tell(study: optuna.Study, trial: optuna.Trial, objective) -> None:
    """Run one trial and tell the study how it ended: a trial's own error (recorded ``failed`` by the objective)
    as failed, and the search goes on; anything else (an interrupt) as failed, and raised."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except _TrialFailed:  # recorded and logged by the objective: not a reason to stop the search
        study.tell(trial, state=TrialState.FAIL)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        study.tell(trial, value)


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _setting_worker(grid, spec, est, aux, labels, out, data_dir, commit, worker, threads) -> int:
    """One more process searching a setting (``--workers``): its own storage handle, torch threads and log."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    return _run_setting(storage, grid, spec, est, aux, labels, out, data_dir, commit, _log_stderr, worker, True)


def worker_pool(n: int) -> ProcessPoolExecutor:
    """``n`` more processes for a setting's trials (spawned), killed when this one dies, as the harness's workers
    are (a search stopped with SIGTERM left its second worker training on, alone)."""
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))


def run_search(grid: gridmod.Grid, spec: Dict, out: Path, data_dir, log=print, workers: int = 1,
               threads: Optional[int] = None) -> int:
    """Run (or continue) every setting's study; returns how many trials ran. ``workers``: processes running a
    setting's trials at once (this one and ``workers - 1`` more, each with ``threads`` torch threads). Two
    commands on one folder share its settings' trials the same way: a trial running in one is never taken for
    one cut short by a kill."""
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    commit = commit_label(git_commit())
    ran = 0
    for est, aux, labels in gridmod.settings(grid):
        if workers <= 1:
            ran += _run_setting(storage, grid, spec, est, aux, labels, out, data_dir, commit, log)
            continue
        with worker_pool(workers - 1) as pool:
            others = [pool.submit(_setting_worker, grid, spec, est, aux, labels, out, data_dir, commit, w,
                                  threads or torch.get_num_threads()) for w in range(1, workers)]
            ran += _run_setting(storage, grid, spec, est, aux, labels, out, data_dir, commit, log, 0, True)
            ran += sum(f.result() for f in others)
    return ran


# -- the command ---------------------------------------------------------------------------------
#: the grid fields that choose a search's settings: a folder holds any settings of one search
SETTING_FIELDS = ("estimators", "aux", "labels")


def widens(new: Dict, old: Dict) -> bool:
    """Whether the space ``new`` contains ``old``: the same keys, each range reaching at least as far both ways,
    each candidate list holding every earlier candidate."""
    if set(new) != set(old):
        return False
    for key, (kind, *rest) in new.items():
        old_kind, *old_rest = old[key]
        if kind != old_kind or (kind == "range" and not rest[0] <= old_rest[0] <= old_rest[1] <= rest[1]) or (
                kind == "choices" and any(c not in rest[0] for c in old_rest[0])):
            return False
    return True


def merged_grid(prev_env: dict, grid: dict, out: Path) -> dict:
    """The grid env.json keeps when ``grid`` searches more settings of the search already in ``out``: the union of
    their settings and search spaces; an estimator's space that contains the folder's replaces it (a widening:
    the earlier one is kept under ``search.widened``). Any other difference (seeds, epochs, the search table, a
    run field, a space that does not contain the folder's) is another search: refused in one line."""
    prev, grid = json.loads(json.dumps(prev_env.get("grid") or {})), json.loads(json.dumps(grid))  # as env.json has them

    def rest(g: dict) -> dict:
        return {k: ({**v, "space": None, "widened": None} if k == "search" else v) for k, v in g.items()
                if k not in SETTING_FIELDS}

    if not prev.get("search") or rest(prev) != rest(grid):
        raise ConfigError(f"{out} holds another search or grid ({prev_env.get('preset')}): choose another --out")
    space, widened = dict(prev["search"]["space"]), dict(prev["search"].get("widened") or {})
    for est, dims in grid["search"]["space"].items():
        old = space.setdefault(est, dims)
        if old != dims:
            if not widens(dims, old):
                raise ConfigError(f"{out} searched {est} over another space, one this space does not contain: "
                                  f"choose another --out")
            widened[est], space[est] = widened.get(est, []) + [old], dims
    return {**grid_union(prev, grid), "search": {**grid["search"], "space": space, **({"widened": widened} if widened else {})}}


def add_search_parser(sub) -> None:
    p = sub.add_parser("search", help=COMMANDS["search"].help)
    add_grid_args(p, default_preset="search")
    p.add_argument("--workers", type=int, default=1,
                   help="processes running one setting's trials at once (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: the usable CPUs / workers)")
    add_data_args(p)
    p.set_defaults(func=cmd_search)


def cmd_search(args) -> int:
    grid = grid_from_args(args, search=True)
    if not grid.search:
        raise ConfigError(f"preset {grid.name} has no [search] table: it is a grid (python -m bench run)")
    if len(grid.seeds) < 3:
        raise ConfigError(f"a search needs at least 3 seeds per trial (got {len(grid.seeds)}): --seeds 3")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1 (got {args.threads})")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    out = Path(args.out or f"results/{grid.name}-{grid.device.replace(':', '')}")
    root = ssdata.locate_mnist(args.data_dir, download=False if args.no_download else None)
    hashes = ssdata.check_raw(root)
    threads = args.threads or max(1, usable_cpus() // args.workers)
    torch.set_num_threads(threads)
    env_path = Folder(out).env
    with OutputLock(out):  # env.json read, merged and written by one command at a time
        env = folder_provenance(grid, hashes, threads)
        if env_path.is_file():
            env["grid"] = merged_grid(json.loads(env_path.read_text()), env["grid"], out)
            env["earlier_runs"] = earlier_runs(env_path)
        atomic_write_json(env_path, env)
    ran = run_search(grid, grid.search, out, str(root), log=_log_stderr, workers=args.workers, threads=threads)
    print(f"bench: search {grid.name}: {ran} trial(s) run -> {out} (choose with: python -m bench tune {out})",
          file=sys.stderr)
    return 0
