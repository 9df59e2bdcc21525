"""The tuning study's text, ``OUT/tune.md`` (:func:`write_markdown`): provenance, how the choices were made (a
tuning grid, or a search: its pruner, rungs and widenings, and the rung decisions a later rule would change),
then the tables :mod:`bench.report.tune_study` wrote."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List

from ssvae.config import DEFAULT_RUN, sci

from ..analysis.prune_replay import cut_short_rivals, differing, made_with_cut_short, replay
from ..core.provenance import REPO
from ..core.schema import Folder
from ..run.tune import CHOICE_FILE, PRUNE_ON, PYRO_LR, search_rungs, widenings
from .common import parts_lines
from .tune_plots import provenance_line


def _shown(out: Path) -> str:
    """``out`` as a command typed at the repository's root names it (as given where it lies outside)."""
    try:
        return str(Path(out).resolve().relative_to(REPO))
    except ValueError:
        return str(out)


def default_words(prov: dict) -> str:
    """What a choice is compared with: "Pyro's learning rate with the estimator's default options", or the
    grid's own learning rate and aux multiplier where the preset sets them (search-table1: Pyro's Table 1)."""
    if math.isclose(prov["lr"], PYRO_LR, rel_tol=1e-9) and math.isclose(
            prov["aux_multiplier"], DEFAULT_RUN.aux_multiplier, rel_tol=1e-9):
        return "Pyro's learning rate with the estimator's default options"
    return (f"the grid's learning rate {sci(prov['lr'])} and aux multiplier {prov['aux_multiplier']:g} with the "
            "estimator's default options")


def write_markdown(out: Path, all_rows: List[dict], choice_rows: List[dict], prov: dict) -> None:
    """``OUT/tune.md``: provenance, how the choices were made, and the tables the study wrote."""
    text = [
        "# Tuning on validation data", "",
        f"Provenance: {provenance_line(prov)}.", "",
        f"Command: `{prov.get('command')}`; selection: `python -m bench tune {_shown(out)}` "
        f"(rule in [{CHOICE_FILE}]({CHOICE_FILE})).", "", *parts_lines(prov.get("parts") or [], bool(prov.get("search"))),
        _how(prov), "", *_reused(prov), *_void(prov), *_replayed(out, prov),
        *_cut_short(out, prov),
        "Per estimator, the combination with the highest mean validation accuracy over seeds "
        "(`best_valid_acc`; test accuracy is not read). `chosen_minus_default` is the chosen "
        f"combination minus {default_words(prov)}, paired over seeds, "
        "with its 95 % t-interval half-width. `beats`: the eligible combinations of the same setting with a "
        "lower mean; `not_eligible`: those pruned, diverged or failed (each a distinct combination: values two "
        "trials shared count once; every trial is a row below); `trials`: the combinations run (in a search: of "
        "how many planned; an unfinished setting is shown, not chosen: it is left out of tuned.json); `on_edge`: a "
        "chosen value at an end of what was searched (widen the range there, or read the end as the range's limit). "
        "Under every "
        "combination, `epochs_run` and `best_so_far` say where a trial stopped: the most epochs a seed ran and the "
        "mean over seeds of each seed's best validation accuracy by then (a pruned trial has no `n_seeds`).", "",
        "## Choices", "", (Folder(out).tables / "tune_choices.md").read_text(), "",
        "## Sensitivity", "", "![validation accuracy against learning rate](plots/tune_sensitivity.png)", "",
        "## Every combination", "", (Folder(out).tables / "tune_all.md").read_text(),
    ]
    (out / "tune.md").write_text("\n".join(text))


def _reused(prov: dict) -> List[str]:
    """For a search run with ``--reuse``: the trials whose seeds are a grid's finished cells, not trained again
    (:mod:`bench.run.search_reuse`), each with the folder and the CPU the cells ran on (``prov["reused"]``)."""
    found = {}
    for study, trial, folder, cpu in prov.get("reused") or []:
        found.setdefault((study, trial), set()).add((folder, cpu))
    items = [f"{study} trial {trial} ({'; '.join(f'{folder}, trained on {cpu}' for folder, cpu in sorted(where))})"
             for (study, trial), where in sorted(found.items())]
    return [f"Not trained again (`--reuse`): {'; '.join(items)}: every seed of these trials is a finished cell of "
            "that grid with the same configuration, data, torch and pyro, its curves taken as they are (a cell of "
            "another CPU is the same cell to the harness, not the same bits).", ""] if items else []


def _void(prov: dict) -> List[str]:
    """The void runs of a search (``prov["void"]``: study, trial, why; :mod:`bench.run.search_lines`)."""
    items = [f"{study} trial {trial} ({why})" for study, trial, why in prov.get("void") or []]
    return [f"Void: {'; '.join(items)}. A trial cut short and run again is not judged again at the rungs an earlier "
            "run of it passed (`bench.run.search_lines`, since 2026-12-06; before, its first rung re-rolled a "
            "decision already made, on another CPU with other numbers): a void run is listed below, is no rival "
            "and is not counted among the setting's trials.", ""] if items else []


def _replayed(out: Path, prov: dict) -> List[str]:
    """For a search pruned on the last epoch's value: its rung decisions replayed under the best so far
    (:mod:`bench.analysis.prune_replay`), the ones that differ listed (none: one line saying so)."""
    search = prov.get("search")
    if not search or search.get("prune_on") == PRUNE_ON or not Folder(out).journal.is_file():
        return []
    table = replay(Folder(out).journal, search["reduction"])
    diff = differing(table)
    items = [f"{r.study} trial {r.trial} at epoch {r.epoch} ({'pruned' if not r.promoted_last else 'promoted'}: "
             f"last {r.last:.4f}, best so far {r.best_so_far:.4f})" for r in diff.itertuples()]
    return [f"Replayed under the best-so-far rule (`bench.analysis.prune_replay`: the same trials reaching the same "
            f"rungs in the same order), {len(diff)} of its {len(table)} rung decisions differ"
            + (f": {'; '.join(items)}. What those trials would have reached is not known; compare their best so far "
               "with the choice's mean below." if items else "."), ""]


def _cut_short(out: Path, prov: dict) -> List[str]:
    """For a search whose pruner counted the rung values of trials cut short (until 2026-12-06: a trial run again
    after a kill met its earlier run as a rival), the decisions that leaving them out changes
    (:func:`bench.analysis.prune_replay.cut_short_rivals`); nothing where no decision counted one."""
    search = prov.get("search")
    if not search or not Folder(out).journal.is_file():
        return []
    table = cut_short_rivals(Folder(out).journal, search["reduction"])
    made = made_with_cut_short(table)
    if not len(made):
        return []
    items = [f"{r.study} trial {r.trial} at epoch {r.epoch} ({r.outcome}: {r.value:.4f}; {r.cut_short} of its "
             f"{r.rivals} rivals cut short)" for r in made.itertuples()]
    return [f"Rivals cut short: until 2026-12-06 the pruner counted the rung values of a trial cut short (killed at "
            "a session's end) beside those of the same values run again; left out, as the pruner does since "
            f"(`bench.analysis.prune_replay.cut_short_rivals`), {len(made)} of this search's {len(table)} rung "
            f"decisions differ: {'; '.join(items)}. What a trial pruned there would have reached is not known.", ""]


def _how(prov: dict) -> str:
    search = prov.get("search")
    if not search:
        return ("A tuning grid: every combination of the candidates, each trained on every seed for the grid's "
                "budget; a short budget favours large steps, so read its choice as a sensitivity check.")
    rungs = search_rungs(search, prov.get("epochs") or 0)
    return (f"A search at the reporting budget (`python -m bench search`): per setting {search['trials']} trials "
            f"(the first the default, then Optuna's TPE sampler, seed {search['seed']}), each trained on every "
            f"seed for up to {prov.get('epochs')} epochs; after each epoch "
            + ("the mean over seeds of each seed's best validation accuracy so far (the number a trial is chosen "
               "by)" if search.get("prune_on") == PRUNE_ON else
               "the mean validation accuracy over seeds at that epoch (the rule before the pruner saw the best so "
               "far: a trial whose accuracy peaked early could be pruned on its fall)")
            + f" goes to a successive-halving pruner (rungs at epochs {', '.join(map(str, rungs)) or 'none'}, keeping "
            f"the best 1/{search['reduction']}). A pruned trial is not eligible." + (
                " Widened after a choice sat on an edge (the study went on with `trials` more trials from the wider "
                f"space, its sampler seeing every earlier trial): {'; '.join(widenings(search))}." if widenings(search) else ""))
