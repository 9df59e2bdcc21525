"""Tuning at the reporting budget: a successive-halving search over each variant's options (Optuna).

A preset with a ``[search]`` table is a search, run with ``python -m bench search --preset P --out OUT``
(``bench run`` refuses it). For every setting of its grid (estimator x aux x label count; no baseline)
it runs ``trials`` trials. A trial is one combination of values, trained on every seed of the grid
(at least 3) to the grid's ``epochs``, the budget the references report at; after each epoch the mean
over seeds of each seed's best validation accuracy so far (:func:`objective_so_far`: the trial's value, had it
stopped there) goes to an asynchronous successive-halving pruner
(:class:`optuna.pruners.SuccessiveHalvingPruner`: at the rungs ``first_rung`` x ``reduction``^k epochs a
trial outside the best 1/``reduction`` of those that reached the rung stops; a trial cut short and run again
is not a rival of its own, nor judged again at the rungs it had passed: :mod:`bench.run.search_lines`). The
values come from Optuna's TPE sampler (seeded); the first trial of every setting is the default (the grid's
learning rate and the estimator's default options), so the study can say what tuning gained over it::

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
of the same command continues it. Seeds advance one epoch at a time, each resumed from its state
(:func:`ssvae.train.train`'s ``resume``), so a trial's numbers are those of uninterrupted runs; after each
epoch the seeds' states are saved (``OUT/cache/search/``, :class:`bench.run.tasks.SavedState`), so that a
trial cut short by a kill or an interrupt (a session's end) is tried again from its last finished epoch:
its saved epochs go to the pruner in order (their rung values recorded; rungs it had passed are not judged
again, as for a trial run again from epoch 1), and its records say ``resumed_from_epoch``.

A choice on an edge of its range asks for a wider range: give the estimator its own wider table
(``[search.gumbel] lr = {low = 4.2e-5, high = 4.2e-2}``) and rerun the same command on the same folder. A
space that contains the folder's is a widening (env.json keeps the earlier spaces under ``widened``): the
setting's study goes on with ``trials`` more trials drawn from the wider space, its sampler seeing every
earlier trial. Any other change of space is another search, refused.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import optuna
import torch
from filelock import FileLock, Timeout
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ssvae.errors import DivergedError
from ssvae.evaluate import EvalPlan
from ssvae.train import check_resume, train

from ..core.numerics import flush_denormals
from ..core.provenance import commit_label, git_commit
from ..core.schema import Folder, setting_id
from ..core.store import atomic_write_json
from ..core.taskdata import _load_data
from . import grid as gridmod
from .launch import die_with_parent
from .search_lines import RESUMES, Halving, try_again as _try_again, void_rejudged, voided
from .search_reuse import finished_cells
from .tasks import SavedState
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


def _trial_state(out: Path, name: str, trial: optuna.Trial, values: Dict, cfgs: Dict, datasets: Dict) -> SavedState:
    """Where the trial's seeds keep their states after each epoch (``OUT/cache/search/``), under the number of the
    trial it continues (a trial queued again after a kill continues the killed one's epochs)."""
    spec = {"search": name, "trial": trial.user_attrs.get(RESUMES, trial.number), "values": values,
            "configs": {str(s): cfg.to_dict() for s, cfg in cfgs.items()}}
    return SavedState(Folder(out).cache, spec, ",".join(datasets[s].sha256 for s in cfgs), kind="search")


def _saved_states(saved: SavedState, cfgs: Dict, datasets: Dict) -> Dict[int, dict]:
    """The seeds' states of the trial's last finished epoch, or {} (none saved, or not usable)."""
    def check(parts):
        for s, cfg in cfgs.items():
            check_resume(parts["seeds"][s], cfg, datasets[s], EVALUATION)
        if len({parts["seeds"][s]["epoch"] for s in cfgs}) != 1:
            raise ValueError("seeds at different epochs")
    parts = saved.load_parts(check)
    return parts["seeds"] if parts else {}


def _objective(grid, est, aux, labels, datasets, dists, space: Dict, out: Path, commit: str, log, reuse=(), ident=None):
    name = setting_id(est, aux, labels)

    def objective(trial: optuna.Trial) -> float:
        flushed = flush_denormals()  # as every task: see bench.core.numerics
        params = {k: _suggest(trial, k, d) for k, d in dists.items()}
        values = values_of(params)
        cfgs = {s: trial_config(grid, est, aux, labels, s, values) for s in grid.seeds}
        saved = _trial_state(out, name, trial, values, cfgs, datasets)
        states: Dict[int, Optional[dict]] = _saved_states(saved, cfgs, datasets)
        reused = {} if states else finished_cells(reuse, cfgs, ident)
        states = states or reused or {s: None for s in grid.seeds}
        start = states[grid.seeds[0]]["epoch"] if states[grid.seeds[0]] else 0
        if reused:
            cells = ", ".join(r["reused_from"] for r in reused.values())
            log(f"search: {name} trial {trial.number}: its {len(cfgs)} seeds' runs are finished cells of the same "
                f"configuration, data, torch and pyro: {cells}")
        elif start:
            log(f"search: {name} trial {trial.number}: resumed from epoch {start} of {grid.epochs} ({saved.path})")
        status, error = "ok", None
        try:
            for epoch in range(1, grid.epochs + 1):
                if epoch > start:
                    for s in grid.seeds:
                        states[s] = _one_epoch(cfgs[s], datasets[s], states[s])
                    if epoch < grid.epochs:
                        saved.save_parts(seeds=states)
                # the saved epochs go to the pruner in order, each rung judged against the trials that reached it by now
                trial.report(objective_so_far([states[s]["curves"][:epoch] for s in grid.seeds]), epoch)
                if epoch < grid.epochs and trial.should_prune():
                    status = "pruned"
                    states = {s: {"curves": states[s]["curves"][:epoch]} for s in grid.seeds}
                    break
        except DivergedError:
            status = "diverged"
        except Exception as exc:  # noqa: BLE001 (one trial's fault: recorded, and the search goes on)
            status, error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        saved.delete()  # the trial has ended (an interrupt raises past this line: its state stays)
        recs = [{**_record(cfgs[s], trial.number, name, values, space, status, states[s], commit),
                 "flush_denormal": flushed, **({"error": error} if error else {}),
                 **({"reused_from": reused[s]["reused_from"], "reused_device": reused[s]["reused_device"]} if reused
                    else {"resumed_from_epoch": start} if start else {})} for s in grid.seeds]
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
        pruner=Halving(min_resource=spec["first_rung"], reduction_factor=spec["reduction"]))
    held = len(study.get_trials(deepcopy=False))
    if held or worker or parallel:
        study.sampler = optuna.samplers.TPESampler(seed=spec["seed"] + held + WORKER_SEED_STRIDE * worker,
                                                   constant_liar=parallel)
    return study


def _resume(study: optuna.Study, dists: Dict, alive: Callable[[int], bool] = lambda number: False
            ) -> Tuple[int, int, int]:
    """Trials cut short by a kill (RUNNING, and not ``alive``: no process holds their lock) are marked failed and
    queued again; returns how many trials are done (complete, pruned, diverged or failed with a record; a void
    run, :func:`bench.run.search_lines.void_rejudged`, is not) drawn from ``dists``
    (the current space: a widened one starts again at 0), how many from earlier spaces, and how many of the
    current space are running in another process."""
    running = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if alive(t.number):
            running += t.distributions == dists or not t.distributions
            continue
        _try_again(study, t)
    trials = study.get_trials(deepcopy=False)
    void = voided(trials)
    done = [t.distributions == dists for t in trials if t.number not in void and (
            t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            # diverged (told as failed before diverged trials returned the worst value), or failed with a record:
            # a trial that raised counts, so that an error every trial meets cannot run trials for ever
            or (t.state == TrialState.FAIL and t.user_attrs.get("status") in ("diverged", "failed")))]
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
                 commit: str, log, worker: int = 0, parallel: bool = False, reuse=(), ident=None) -> int:
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
        for number, why in void_rejudged(study, out):
            log(f"search: {name} trial {number}: void, {why}")
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
    objective = _objective(grid, est, aux, labels, datasets, dists, spec["space"][est], out, commit, log, reuse, ident)
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
    as failed, and the search goes on; anything else (an interrupt) as cut short (:func:`_try_again`), and raised."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except _TrialFailed:  # recorded and logged by the objective: not a reason to stop the search
        study.tell(trial, state=TrialState.FAIL)
    except BaseException:  # an interrupt: tried again, from its last saved epoch, by the next command
        _try_again(study, trial)
        raise
    else:
        study.tell(trial, value)


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _setting_worker(grid, spec, est, aux, labels, out, data_dir, commit, worker, threads, reuse, ident) -> int:
    """One more process searching a setting (``--workers``): its own storage handle, torch threads and log."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    return _run_setting(storage, grid, spec, est, aux, labels, out, data_dir, commit, log_stderr, worker, True, reuse,
                        ident)


def worker_pool(n: int) -> ProcessPoolExecutor:
    """``n`` more processes for a setting's trials (spawned), killed when this one dies, as the harness's workers
    are (a search stopped with SIGTERM left its second worker training on, alone)."""
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))


def run_search(grid: gridmod.Grid, spec: Dict, out: Path, data_dir, log=print, workers: int = 1,
               threads: Optional[int] = None, reuse: Sequence[Path] = (), ident: Optional[dict] = None) -> int:
    """Run (or continue) every setting's study; returns how many trials ran. ``workers``: processes running a
    setting's trials at once (this one and ``workers - 1`` more, each with ``threads`` torch threads). Two
    commands on one folder share its settings' trials the same way: a trial running in one is never taken for
    one cut short by a kill. ``reuse``: folders whose finished cells stand for a trial's seeds, given this run's
    ``ident`` (:mod:`bench.run.search_reuse`)."""
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    commit = commit_label(git_commit())
    ran = 0
    for est, aux, labels in gridmod.settings(grid):
        if workers <= 1:
            ran += _run_setting(storage, grid, spec, est, aux, labels, out, data_dir, commit, log, reuse=reuse,
                                ident=ident)
            continue
        with worker_pool(workers - 1) as pool:
            others = [pool.submit(_setting_worker, grid, spec, est, aux, labels, out, data_dir, commit, w,
                                  threads or torch.get_num_threads(), reuse, ident) for w in range(1, workers)]
            ran += _run_setting(storage, grid, spec, est, aux, labels, out, data_dir, commit, log, 0, True, reuse,
                                ident)
            ran += sum(f.result() for f in others)
    return ran
