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
CREATE_STUDY, CREATE_TRIAL, SET_INTERMEDIATE, SET_SYSTEM_ATTR = 0, 4, 7, 9
RUNG_ATTR = "completed_rung_"
REPLAY_COLUMNS = ["study", "trial", "rung", "epoch", "last", "best_so_far", "promoted_last", "promoted_best"]


def promoted(value: float, competing: List[float], reduction: int) -> bool:
    """Optuna's successive-halving rule (maximising): the trial goes on if ``value`` is among the best
    ``len(competing) // reduction`` of the rung's values so far (its own included; at least the best one)."""
    k = max(len(competing) // reduction - 1, 0)
    return value >= sorted(competing, reverse=True)[k]


def replay(journal, reduction: int) -> pd.DataFrame:
    """One row per rung a trial completed (:data:`REPLAY_COLUMNS`): the study, the trial's number in it, the rung,
    the epoch it was decided at, the last epoch's value and the best so far, and whether each rule promotes it."""
    studies: List[str] = []
    trial_of: Dict[int, tuple] = {}
    per_study: Dict[str, int] = defaultdict(int)
    values: Dict[int, Dict[int, float]] = defaultdict(dict)
    events = []
    for line in Path(journal).read_text().splitlines():
        op = json.loads(line)
        code = op.get("op_code")
        if code == CREATE_STUDY:
            studies.append(op["study_name"])
        elif code == CREATE_TRIAL:
            study = studies[op["study_id"]]
            trial_of[len(trial_of)] = (study, per_study[study])
            per_study[study] += 1
        elif code == SET_INTERMEDIATE:
            values[op["trial_id"]][int(op["step"])] = float(op["intermediate_value"])
        elif code == SET_SYSTEM_ATTR:
            for key in op.get("system_attr", {}):
                if key.startswith(RUNG_ATTR) and values[op["trial_id"]]:
                    events.append((op["trial_id"], int(key[len(RUNG_ATTR):]), max(values[op["trial_id"]])))
    seen: Dict[tuple, Dict[str, List[float]]] = defaultdict(lambda: {"last": [], "best": []})
    rows = []
    for tid, rung, epoch in events:
        study, number = trial_of[tid]
        last, best = values[tid][epoch], max(v for e, v in values[tid].items() if e <= epoch)
        rivals = seen[(study, rung)]
        rivals["last"].append(last)
        rivals["best"].append(best)
        rows.append({"study": study, "trial": number, "rung": rung, "epoch": epoch, "last": last,
                     "best_so_far": best, "promoted_last": promoted(last, rivals["last"], reduction),
                     "promoted_best": promoted(best, rivals["best"], reduction)})
    return pd.DataFrame(rows, columns=REPLAY_COLUMNS)


def differing(table: pd.DataFrame) -> pd.DataFrame:
    """The rung decisions the two rules take differently."""
    return table[table.promoted_last != table.promoted_best] if len(table) else table
