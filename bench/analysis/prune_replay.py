"""A search's pruning decisions replayed under the rule it did not run with.

Until the search's pruner saw each trial's best validation accuracy so far (``bench.run.search.objective_so_far``;
``prune_on`` in the search's spec), it saw the last epoch's mean validation accuracy, so a trial whose accuracy
peaked early and then fell could be pruned on its fall although the number it is chosen by, its best, ranked it
higher. :func:`replay` reads a search's Optuna journal (``OUT/search.journal``) and decides every rung again
under both values, first order: the same trials reach the same rungs in the same order, each decided against
the values of the trials that reached that rung before it, by the rule of Optuna's
:class:`~optuna.pruners.SuccessiveHalvingPruner` (``_is_trial_promotable_to_next_rung``). A decision that
differs names a trial the old rule may have stopped too early (or let go on); what it would have reached is
not known.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import pandas as pd

#: Optuna's journal operations read here (optuna.storages.journal's JournalOperation)
CREATE_STUDY, CREATE_TRIAL, SET_STATE, SET_INTERMEDIATE, SET_USER_ATTR, SET_SYSTEM_ATTR = 0, 4, 6, 7, 8, 9
#: optuna.trial.TrialState.PRUNED as the journal writes it
PRUNED_STATE = 2
RUNG_ATTR = "completed_rung_"
REPLAY_COLUMNS = ["study", "trial", "rung", "epoch", "last", "best_so_far", "promoted_last", "promoted_best"]
CUT_SHORT_COLUMNS = ["study", "trial", "rung", "epoch", "value", "rivals", "cut_short", "promoted_with",
                     "promoted_without", "outcome"]


def promoted(value: float, competing: List[float], reduction: int) -> bool:
    """Optuna's successive-halving rule (maximising): the trial goes on if ``value`` is among the best
    ``len(competing) // reduction`` of the rung's values so far (its own included; at least the best one)."""
    k = max(len(competing) // reduction - 1, 0)
    return value >= sorted(competing, reverse=True)[k]


def _read(journal):
    """The journal's operations in order, each trial named: yields (code, operation, (study, number) or None)."""
    studies: List[str] = []
    trial_of: Dict[int, tuple] = {}
    per_study: Dict[str, int] = defaultdict(int)
    for line in Path(journal).read_text().splitlines():
        op = json.loads(line)
        code = op.get("op_code")
        if code == CREATE_STUDY and op["study_name"] not in studies:  # a study loaded again writes it again
            studies.append(op["study_name"])
        elif code == CREATE_TRIAL:
            study = studies[op["study_id"]]
            trial_of[len(trial_of)] = (study, per_study[study])
            per_study[study] += 1
        yield code, op, trial_of.get(op.get("trial_id"))


def replay(journal, reduction: int) -> pd.DataFrame:
    """One row per rung a trial completed (:data:`REPLAY_COLUMNS`): the study, the trial's number in it, the rung,
    the epoch it was decided at, the last epoch's value and the best so far, and whether each rule promotes it."""
    values: Dict[int, Dict[int, float]] = defaultdict(dict)
    events = []
    for code, op, named in _read(journal):
        if code == SET_INTERMEDIATE:
            values[op["trial_id"]][int(op["step"])] = float(op["intermediate_value"])
        elif code == SET_SYSTEM_ATTR:
            for key in op.get("system_attr", {}):
                if key.startswith(RUNG_ATTR) and values[op["trial_id"]]:
                    events.append((named, op["trial_id"], int(key[len(RUNG_ATTR):]), max(values[op["trial_id"]])))
    seen: Dict[tuple, Dict[str, List[float]]] = defaultdict(lambda: {"last": [], "best": []})
    rows = []
    for (study, number), tid, rung, epoch in events:
        last, best = values[tid][epoch], max(v for e, v in values[tid].items() if e <= epoch)
        rivals = seen[(study, rung)]
        rivals["last"].append(last)
        rivals["best"].append(best)
        rows.append({"study": study, "trial": number, "rung": rung, "epoch": epoch, "last": last,
                     "best_so_far": best, "promoted_last": promoted(last, rivals["last"], reduction),
                     "promoted_best": promoted(best, rivals["best"], reduction)})
    return pd.DataFrame(rows, columns=REPLAY_COLUMNS)


def cut_short_rivals(journal, reduction: int) -> pd.DataFrame:
    """Every rung decision with and without the rung values of trials cut short among its rivals (one row each,
    :data:`CUT_SHORT_COLUMNS`). A trial cut short runs again with the same values and reaches the same rungs
    with them; until 2026-12-06 the pruner counted its earlier run as a rival (``bench.run.search_lines.Halving`` now
    leaves it out). ``outcome``: what the trial did after the decision (``went on``, ``pruned``, or empty while
    not known), so that a row whose outcome follows ``promoted_with`` where the two rules differ is a decision
    the old rule made."""
    cut, state, last_step, decisions = set(), {}, defaultdict(int), []
    for code, op, named in _read(journal):
        tid = op.get("trial_id")
        if code == SET_USER_ATTR and op.get("user_attr", {}).get("status") == "interrupted":
            cut.add(tid)
        elif code == SET_STATE:
            state[tid] = op["state"]
        elif code == SET_INTERMEDIATE:
            last_step[tid] = max(last_step[tid], int(op["step"]))
        elif code == SET_SYSTEM_ATTR:
            for key, value in op.get("system_attr", {}).items():
                if key.startswith(RUNG_ATTR):
                    decisions.append((named, tid, int(key[len(RUNG_ATTR):]), last_step[tid], float(value),
                                      frozenset(cut)))
    seen: Dict[tuple, List[tuple]] = defaultdict(list)
    rows = []
    for (study, number), tid, rung, epoch, value, cut_then in decisions:
        rivals = seen[(study, rung)]
        kept = [v for t, v in rivals if t not in cut_then]
        outcome = ("went on" if last_step[tid] > epoch else
                   "pruned" if state.get(tid) == PRUNED_STATE and last_step[tid] == epoch else "")
        rows.append({"study": study, "trial": number, "rung": rung, "epoch": epoch, "value": value,
                     "rivals": len(rivals), "cut_short": len(rivals) - len(kept),
                     "promoted_with": promoted(value, [v for _, v in rivals] + [value], reduction),
                     "promoted_without": promoted(value, kept + [value], reduction), "outcome": outcome})
        rivals.append((tid, value))
    return pd.DataFrame(rows, columns=CUT_SHORT_COLUMNS)


def made_with_cut_short(table: pd.DataFrame) -> pd.DataFrame:
    """The decisions :func:`cut_short_rivals` finds the old rule made and leaving the cut-short rivals out changes."""
    if not len(table):
        return table
    went_on = table.outcome == "went on"
    return table[(table.promoted_with != table.promoted_without) & (table.outcome != "")
                 & (went_on == table.promoted_with)]


def differing(table: pd.DataFrame) -> pd.DataFrame:
    """The rung decisions the two rules take differently."""
    return table[table.promoted_last != table.promoted_best] if len(table) else table
