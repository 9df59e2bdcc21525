"""bench.analysis.prune_replay: a search journal's rung decisions replayed under the last epoch's value (the rule
they were made by: the replay must agree with Optuna on every one) and under the best so far."""
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
