"""Tuning at the reporting budget: a successive-halving search over each variant's options (Optuna).

A preset with a ``[search]`` table is a search, run with ``python -m bench search --preset P --out OUT``
(``bench run`` refuses it). For every setting of its grid (estimator x aux x label count; no baseline)
it runs ``trials`` trials. A trial is one combination of values, trained on every seed of the grid
(at least 3) to the grid's ``epochs``, the budget the references report at; after each epoch the mean
over seeds of the validation accuracy goes to an asynchronous successive-halving pruner
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
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

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
from ..core.provenance import commit_label, git_commit, usable_cpus
from ..core.schema import Folder, grid_union, setting_id
from ..core.store import OutputLock, atomic_write_json
from ..core.taskdata import _load_data
from . import grid as gridmod
from .harness import add_grid_args, earlier_runs, folder_provenance, grid_from_args
from .tune import RUN_FIELDS, encode, default_params, values_of

JOURNAL = "search.journal"
#: what a diverged trial reports to the sampler: below any accuracy (its records say diverged: not eligible)
DIVERGED_VALUE = 0.0
#: the per-epoch evaluation of a trial: validation (and test) accuracy only, no ELBO, no final bound
EVALUATION = EvalPlan(elbo_images=0, iwae_images=0)


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


def _objective(grid, est, aux, labels, datasets, dists, space: Dict, out: Path, commit: str, log):
    name = setting_id(est, aux, labels)

    def objective(trial: optuna.Trial) -> float:
        params = {k: _suggest(trial, k, d) for k, d in dists.items()}
        values = values_of(params)
        cfgs = {s: trial_config(grid, est, aux, labels, s, values) for s in grid.seeds}
        states: Dict[int, Optional[dict]] = {s: None for s in grid.seeds}
        status = "ok"
        try:
            for epoch in range(1, grid.epochs + 1):
                for s in grid.seeds:
                    states[s] = _one_epoch(cfgs[s], datasets[s], states[s])
                mean_valid = sum(states[s]["curves"][-1]["valid_acc"] for s in grid.seeds) / len(grid.seeds)
                trial.report(mean_valid, epoch)
                if epoch < grid.epochs and trial.should_prune():
                    status = "pruned"
                    break
        except DivergedError:
            status = "diverged"
        recs = [_record(cfgs[s], trial.number, name, values, space, status, states[s], commit) for s in grid.seeds]
        for rec in recs:
            atomic_write_json(Folder(out).runs / f"{rec['id']}.json", rec)
        trial.set_user_attr("status", status)
        epochs = min(r["metrics"]["epochs_run"] for r in recs)
        log(f"search: {name} trial {trial.number}: {status} after {epochs} epoch(s) "
            f"({', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in values.items())})")
        if status == "pruned":
            raise optuna.TrialPruned()
        if status == "diverged":
            # the worst value, not a failure: the sampler learns the region diverges (a failed trial teaches it
            # nothing, and it kept proposing learning rates that diverge); its records stay not eligible
            return DIVERGED_VALUE
        return sum(r["metrics"]["best_valid_acc"] for r in recs) / len(recs)

    return objective


def _study(storage, name: str, spec: Dict) -> optuna.Study:
    """The setting's study, created or continued. Its sampler is seeded by the search's seed plus the trials the
    study already holds: a continued search draws on from there (a sampler seeded as at the start would propose
    its first values again: a search cut by the end of a session repeated its early trials)."""
    study = optuna.create_study(
        study_name=name, storage=storage, load_if_exists=True, direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=spec["seed"]),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=spec["first_rung"],
                                                      reduction_factor=spec["reduction"]))
    held = len(study.get_trials(deepcopy=False))
    if held:
        study.sampler = optuna.samplers.TPESampler(seed=spec["seed"] + held)
    return study


def _resume(study: optuna.Study, dists: Dict) -> Tuple[int, int]:
    """Trials cut short by a kill (still RUNNING) are marked failed and queued again; returns how many trials
    are done (complete, pruned or diverged): drawn from ``dists`` (the current space: a widened one starts again
    at 0), and from earlier spaces."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, skip_if_exists=False)
    done = [t.distributions == dists for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.user_attrs.get("status") == "diverged")]  # diverged, before 0.0
    return sum(done), len(done) - sum(done)


def _run_setting(storage, grid: gridmod.Grid, spec: Dict, est: str, aux: bool, labels: int, out: Path, data_dir,
                 commit: str, log) -> int:
    name = setting_id(est, aux, labels)
    study = _study(storage, name, spec)
    space = {k: v for k, v in spec["space"][est].items() if aux or k != "aux_multiplier"}
    done, earlier = _resume(study, distributions(space))
    if not study.get_trials(deepcopy=False):
        first = default_params(space, est, grid.lr, grid.aux_multiplier)
        if first is not None:
            study.enqueue_trial(first)
    todo = spec["trials"] - done
    if todo <= 0:
        log(f"search: {name}: {done} of {spec['trials']} trials done")
        return 0
    datasets = {s: _load_data(trial_config(grid, est, aux, labels, s, {}), data_dir) for s in grid.seeds}
    log(f"search: {name}: {todo} trial(s) to run ({done} done" + (f"; {earlier} over an earlier, narrower space"
                                                                     if earlier else "")
        + f"), {len(grid.seeds)} seeds x {grid.epochs} epochs each")
    study.optimize(_objective(grid, est, aux, labels, datasets, distributions(space), spec["space"][est], out,
                              commit, log), n_trials=todo, catch=())
    return todo


def run_search(grid: gridmod.Grid, spec: Dict, out: Path, data_dir, log=print) -> int:
    """Run (or continue) every setting's study; returns how many trials ran. A setting another command is
    searching (its lock ``OUT/.search-<setting>.lock`` held) is skipped: two commands on one folder share out
    its settings, and a trial still running in the other is never taken for one cut short by a kill."""
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
    commit = commit_label(git_commit())
    ran = 0
    for est, aux, labels in gridmod.settings(grid):
        lock = FileLock(str(out / f".search-{setting_id(est, aux, labels)}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log(f"search: {setting_id(est, aux, labels)}: another command is searching it: skipped")
            continue
        try:
            ran += _run_setting(storage, grid, spec, est, aux, labels, out, data_dir, commit, log)
        finally:
            lock.release()
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
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable CPUs)")
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
    out = Path(args.out or f"results/{grid.name}-{grid.device.replace(':', '')}")
    root = ssdata.locate_mnist(args.data_dir, download=False if args.no_download else None)
    hashes = ssdata.check_raw(root)
    threads = args.threads or usable_cpus()
    torch.set_num_threads(threads)
    env_path = Folder(out).env
    with OutputLock(out):  # env.json read, merged and written by one command at a time
        env = folder_provenance(grid, hashes, threads)
        if env_path.is_file():
            env["grid"] = merged_grid(json.loads(env_path.read_text()), env["grid"], out)
            env["earlier_runs"] = earlier_runs(env_path)
        atomic_write_json(env_path, env)
    ran = run_search(grid, grid.search, out, str(root), log=lambda m: print(m, file=sys.stderr))
    print(f"bench: search {grid.name}: {ran} trial(s) run -> {out} (choose with: python -m bench tune {out})",
          file=sys.stderr)
    return 0
