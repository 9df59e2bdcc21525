"""A search's trial lines: a trial cut short (a kill, a session's end) runs again as a new trial with the same
values, and the runs of one trial so repeated are its *line* (the first run's number is each later one's
:data:`RESUMES` user attribute). The rules that keep a line one trial to the pruner:

* **Cut short** (:func:`try_again`): the run is marked failed (status ``interrupted``) and its values queued again;
  the next run continues its saved epochs (``OUT/cache/search/``) where the machine kept them, else starts over.
* **No rival of its own** (:class:`Halving`): a cut-short run's rung values are left out of every rung decision; the
  line reaches the same rungs again.
* **Rungs passed stay passed** (:class:`Halving`): a run of a line is pruned only from the most epochs an earlier
  run of the line reached; below that its rung values are recorded (rivals of the trials after it) and it goes
  on. Judging it again would re-roll a decision the pruner has made: the same values on another CPU give other
  numbers from the first epoch, and at 100 labels trace + aux's values at epoch 2 are at chance (one trial's
  values met the first rung with 0.1325 on an Intel Xeon, run again on an AMD EPYC with 0.1009: pruned there).
* **Void** (:func:`void_rejudged`): a run pruned below what its line had reached (before the previous rule, until
  2026-12-06) is void: its records say status ``void`` (with why), it is no rival and not counted among the
  setting's trials, and its values are queued again (user attribute :data:`VOIDS`: the run it replaces).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

import optuna
from optuna.trial import TrialState

from ..core.schema import Folder
from ..core.store import atomic_write_json

#: the user attribute of a trial queued again: the first run of its line (whose saved state it continues)
RESUMES = "resumes"
#: the user attribute of a trial queued again for a void run: that run's number
VOIDS = "voids"
CUT, VOID = "interrupted", "void"


def line_of(trial) -> int:
    return trial.user_attrs.get(RESUMES, trial.number)


def line_reached(trials, trial) -> int:
    """The most epochs an earlier run of ``trial``'s line reached before it was cut short (0: none)."""
    line = line_of(trial)
    return max([t.last_step or 0 for t in trials if t.number < trial.number and line_of(t) == line
                and t.user_attrs.get("status") == CUT], default=0)


def voided(trials) -> set:
    """The numbers of the void runs (a later trial queued again for them)."""
    return {t.user_attrs[VOIDS] for t in trials if VOIDS in t.user_attrs}


class Halving(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's successive halving, with a line's rules: cut-short and void runs are no rivals; a run is not
    pruned below the epochs its line reached before."""

    def prune(self, study: optuna.Study, trial) -> bool:
        pruned = super().prune(_Rivals(study), trial)
        return pruned and (trial.last_step or 0) >= line_reached(study.get_trials(deepcopy=False), trial)


class _Rivals:
    """``study`` as the pruner reads it: without its cut-short and void runs."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def get_trials(self, deepcopy: bool = True, states=None):
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        void = voided(trials)
        return [t for t in trials if t.user_attrs.get("status") != CUT and t.number not in void]

    def __getattr__(self, name):
        return getattr(self._study, name)


def try_again(study: optuna.Study, trial) -> None:
    """Trial ``trial`` (a live or frozen one), cut short by a kill or an interrupt: marked failed, and its values
    queued again as the next run of its line."""
    study._storage.set_trial_user_attr(trial._trial_id, "status", CUT)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={RESUMES: line_of(trial)}, skip_if_exists=False)


def void_rejudged(study: optuna.Study, out: Path) -> List[Tuple[int, str]]:
    """Runs pruned below the epochs their line had reached (and not yet void): their records rewritten as void,
    their values queued again; returns (number, why) of each."""
    trials = study.get_trials(deepcopy=False)
    done = voided(trials)
    found = []
    for t in trials:
        reached = line_reached(trials, t)
        if t.state != TrialState.PRUNED or t.number in done or (t.last_step or 0) >= reached:
            continue
        why = (f"pruned at epoch {t.last_step}, a rung its line (trial {line_of(t)}) had passed: an earlier run "
               f"reached epoch {reached}; run again")
        for path in sorted(Folder(out).runs.glob(f"*_t{t.number:03d}.json")):
            rec = json.loads(path.read_text())
            if (rec.get("search") or {}).get("study") == study.study_name:
                atomic_write_json(path, {**rec, "status": VOID, "void": why})
        study.enqueue_trial(t.params, user_attrs={RESUMES: line_of(t), VOIDS: t.number}, skip_if_exists=False)
        found.append((t.number, why))
    return found
