"""bench.analysis.prune_replay: a search journal's rung decisions replayed under the last epoch's value (the rule
they were made by: the replay must agree with Optuna on every one) and under the best so far; and the decisions
made with a trial cut short among the rivals (cut_short_rivals)."""
import os

import optuna
import pytest

from bench.analysis.prune_replay import differing, promoted, replay

# validation accuracy per epoch of five trials, in the order they run: trial 1 peaks at epoch 2 and falls
CURVES = [[0.50, 0.60, 0.62, 0.64, 0.65], [0.55, 0.70, 0.52, 0.50, 0.49], [0.40, 0.45, 0.50, 0.55, 0.56],
          [0.52, 0.61, 0.63, 0.66, 0.67], [0.30, 0.35, 0.40, 0.42, 0.43]]


def _search(tmp_path):
    path = tmp_path / "search.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="gumbel+aux_L100", storage=storage, direction="maximize",
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    ran = {}
    for curve in CURVES:
        trial = study.ask()
        for epoch, acc in enumerate(curve, 1):
            trial.report(acc, epoch)  # the last epoch's value, as the searches before prune_on did
            ran[trial.number] = epoch
            if epoch < len(curve) and trial.should_prune():  # as bench.run.search: no decision at the last epoch
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curve))
    return path, ran


def test_the_replay_agrees_with_optuna_and_names_the_trial_pruned_on_its_fall(tmp_path):
    path, ran = _search(tmp_path)
    table = replay(path, reduction=2)
    assert set(table.study) == {"gumbel+aux_L100"} and len(table)
    for r in table.itertuples():  # the last-value rule is the one Optuna applied: pruned exactly where it stopped
        assert r.promoted_last == (ran[r.trial] > r.epoch), r
        assert r.best_so_far == pytest.approx(max(CURVES[r.trial][:r.epoch]))
        assert r.last == pytest.approx(CURVES[r.trial][r.epoch - 1])
    diff = differing(table)
    assert list(zip(diff.trial, diff.epoch)) == [(1, 4)] and not diff.promoted_last.any()  # 0.50 now, 0.70 at best


@pytest.mark.parametrize("value, competing, reduction, expected", [
    (0.5, [0.5], 3, True),              # the first trial at a rung goes on
    (0.4, [0.5, 0.4], 3, False),        # fewer than `reduction` values: only the best goes on
    (0.6, [0.5, 0.4, 0.6], 3, True),
    (0.5, [0.9, 0.8, 0.7, 0.5, 0.3, 0.2], 3, False),  # 6 values: the best 2 go on
    (0.8, [0.9, 0.8, 0.7, 0.5, 0.3, 0.2], 3, True),
])
def test_promotion_is_optunas_rule(value, competing, reduction, expected):
    from optuna.pruners._successive_halving import _is_trial_promotable_to_next_rung
    from optuna.study import StudyDirection

    assert promoted(value, competing, reduction) is expected
    assert _is_trial_promotable_to_next_rung(value, list(competing), reduction, StudyDirection.MAXIMIZE) is expected


@pytest.mark.parametrize("pruner", ["optuna", "search"])
def test_a_decision_that_counted_a_trial_cut_short_is_named(tmp_path, pruner):
    """A trial cut short at rung 0 (0.9), then a trial at 0.7 (the cut one's values queued again, taken here: what
    matters is the rivals it meets). Optuna's own pruner counted the cut run and pruned it (named: without the cut
    run it goes on); the search's pruner leaves the cut run out (found, not named: not made with it). The committed
    search at 100 labels names gumbel + aux's trial 17, pruned at epoch 2 beside two cut runs."""
    from bench.analysis.prune_replay import cut_short_rivals, made_with_cut_short
    from bench.run import search

    path = tmp_path / "search.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = search._study(storage, "gumbel+aux_L100", {"seed": 0, "first_rung": 1, "reduction": 2})
    if pruner == "optuna":
        study.pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    for value, then in ((0.5, "finish"), (0.9, "cut"), (0.7, "judged")):
        trial = study.ask(lr)
        trial.report(value, 1)
        pruned = trial.should_prune()
        if then == "cut":
            search._try_again(study, trial)  # killed: its values queued again (not run here)
        elif pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            trial.report(value, 2)
            study.tell(trial, value)
    table = cut_short_rivals(path, reduction=2)
    judged = table[table.value == 0.7].iloc[0]
    assert (judged.rivals, judged.cut_short, judged.promoted_with, judged.promoted_without) == (2, 1, False, True)
    assert judged.outcome == ("pruned" if pruner == "optuna" else "went on")
    made = made_with_cut_short(table)
    assert list(made.value) == ([0.7] if pruner == "optuna" else [])


def test_the_study_of_a_search_names_the_decisions_made_with_rivals_cut_short(tmp_path):
    import shutil

    from bench.report import tune_study

    root = os.path.join(os.path.dirname(__file__), "..", "results", "search-table1-cpu")
    shutil.copytree(root, tmp_path / "s", ignore=shutil.ignore_patterns("cache", "logs", ".*lock"))
    tune_study.write_report(tmp_path / "s")
    text = (tmp_path / "s" / "tune.md").read_text()
    assert "gumbel+aux_L100 trial 17 at epoch 2 (pruned: 0.6263; 2 of its 17 rivals cut short)" in text
