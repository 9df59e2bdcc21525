"""The search at the reporting budget (``python -m bench search``, bench/run/search.py): its ``[search]`` table,
its default first trial, its successive halving on validation accuracy, its records (no test number), its
resume, and the tuning study that chooses from it (bench/report/tune_study.py)."""
import csv
import dataclasses
import json
import os

import optuna
import pytest

from bench.cli import main
from bench.core.schema import ENV_FILE
from bench.report import tune_plots, tune_study
from bench.report.common import parts_lines
from bench.run import grid as gridmod
from bench.run import search, search_cli, search_lines
from bench.run.search_reuse import finished_cells
from bench.run.tune import check_search, default_params, values_of
from ssvae.data import split
from ssvae.errors import ConfigError
from ssvae.train import train

from .conftest import needs_mnist, synthetic_raw

TINY = dict(labels=[100], seeds=3, epochs=3, batch_size=50, hidden=[16], z_dim=4, steps_per_epoch=3,
            baseline=False, aux=[True])


def _grid(steps_per_epoch=TINY["steps_per_epoch"], **search_table):
    table = {"trials": 4, "first_rung": 1, "reduction": 2, "lr": {"low": 1e-4, "high": 1e-2}, **search_table}
    return gridmod.make_grid({**TINY, "steps_per_epoch": steps_per_epoch, "estimators": ["enum", "gumbel"],
                              "search": table})


def _data(cfg, data_dir=None):
    tx, ty, vx, vy = synthetic_raw()
    return split(tx, ty, vx, vy, labels=cfg.labels, seed=cfg.seed, train_size=500, sha256="synthetic")


@pytest.mark.parametrize("table, message", [
    ({"trials": 0}, "search.trials must be an integer of at least 1"),
    ({"reduction": 1}, "search.reduction must be an integer of at least 2"),
    ({"lr": {"low": 1e-2, "high": 1e-4}}, "search.lr must be {low = A, high = B} with 0 < A < B"),
    ({"lr": []}, "search.lr must be a list of candidates or a range"),
    ({"rlooo": {"k": [2]}}, "search.rlooo: not an estimator (known: "),
    ({"enum": {"k": [2]}}, "search.enum.k: enum has no option 'k'"),
    ({"gumbel": {"tau0": [-1.0]}}, ""),  # a candidate the estimator refuses fails here, with its own message
])
def test_a_bad_search_table_fails_in_one_line(table, message):
    with pytest.raises(ConfigError) as exc:
        check_search({"lr": {"low": 1e-4, "high": 1e-2}, **table}, ["enum", "gumbel"])
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_the_space_takes_the_records_candidates_and_the_default_comes_first():
    spec = check_search({"lr": {"low": 1e-4, "high": 1e-2}, "nvil": {"baseline_lr": {"low": 1e-4, "high": 1e-1}}},
                        ["gumbel", "nvil", "enum"])
    assert spec["space"]["gumbel"]["schedule"][0] == "choices"  # the registry's candidates
    assert spec["space"]["nvil"]["baseline_lr"] == ("range", 1e-4, 1e-1)  # the table's own range wins
    assert default_params(spec["space"]["enum"], "enum", 4.2e-4, 46.0) == {"lr": 4.2e-4}
    nvil = default_params(spec["space"]["nvil"], "nvil", 4.2e-4, 46.0)
    assert nvil == {"lr": 4.2e-4, "baseline_lr": 4.2e-4}  # NVIL's baseline defaults to the run's lr
    gumbel = values_of(default_params(spec["space"]["gumbel"], "gumbel", 4.2e-4, 46.0))
    assert gumbel == {"lr": 4.2e-4, "tau0": 1.0, "tau_min": 0.5}
    assert default_params(spec["space"]["enum"], "enum", 1.0, 46.0) is None  # outside the range: no default trial


def test_a_grid_narrowed_by_estimators_keeps_the_presets_search_table(capsys, tmp_path):
    # the search preset has [search.nvil] and [search.rloo]: one setting of it must still run
    spec = check_search({"lr": {"low": 1e-4, "high": 1e-2}, "nvil": {"baseline_lr": {"low": 1e-4, "high": 1e-1}}},
                        ["gumbel-st"])
    assert set(spec["space"]) == {"gumbel-st"}
    assert main(["search", "--estimators", "gumbel-st", "--aux", "on", "--labels", "3000",
                 "--out", str(tmp_path / "s"), "--data-dir", str(tmp_path / "none"), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert "search.nvil" not in err and "MNIST" in err  # got past the table, stopped at the missing data


def test_run_and_search_refuse_each_others_presets(capsys):
    assert main(["run", "--preset", "search", "--dry-run"]) == 2
    assert "is a search: run it with python -m bench search" in capsys.readouterr().err
    assert main(["search", "--preset", "quick"]) == 2
    assert "has no [search] table" in capsys.readouterr().err


def test_a_search_prunes_on_validation_records_no_test_number_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(search, "_load_data", _data)
    grid = _grid(steps_per_epoch=6)  # 3 steps an epoch: every trial's best so far stays at chance, none pruned
    messages = []
    assert search.run_search(grid, grid.search, tmp_path, None, log=messages.append) == 8
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / search.JOURNAL)))
    for est in ("enum", "gumbel"):
        study = optuna.load_study(study_name=f"{est}+aux_L100", storage=storage)
        trials = study.get_trials()
        assert len(trials) == 4
        assert trials[0].params["lr"] == pytest.approx(grid.lr)  # the default first
        states = {t.state for t in trials}
        assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
        for t in trials:  # the pruner saw the mean over the 3 seeds of the best validation accuracy so far
            recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob(f"{est}+aux_L100_s*_t{t.number:03d}.json"))]
            assert [r["config"]["seed"] for r in recs] == [0, 1, 2]
            for epoch, value in t.intermediate_values.items():
                assert value == pytest.approx(sum(max(c["valid_acc"] for c in r["curves"][:epoch]) for r in recs) / 3)
            if t.state == optuna.trial.TrialState.COMPLETE:  # and the value it returns is the one it is chosen by
                assert t.value == pytest.approx(sum(r["metrics"]["best_valid_acc"] for r in recs) / 3)
            pruned = t.state == optuna.trial.TrialState.PRUNED
            assert all(r["status"] == ("pruned" if pruned else "ok") for r in recs)
            assert all(r["metrics"]["epochs_run"] == (len(t.intermediate_values) if pruned else 3) for r in recs)
    assert any("pruned" in m for m in messages), messages  # 4 trials, keep the best half at epochs 1 and 2
    assert not any("test" in p.read_text() for p in (tmp_path / "runs").glob("*.json"))
    # trained with subnormal floats flushed, as every task (bench.core.numerics)
    assert all(json.loads(p.read_text())["flush_denormal"] is True for p in (tmp_path / "runs").glob("*.json"))
    # a rerun continues the journal: nothing left to run
    assert search.run_search(grid, grid.search, tmp_path, None, log=messages.append) == 0
    # the tuning study chooses from the search's records, as from a grid's
    (tmp_path / ENV_FILE).write_text(json.dumps({"preset": "test", "grid": grid.to_dict()}))
    doc = tune_study.write_report(tmp_path)
    assert set(doc["settings"]) == {"enum+aux_L100", "gumbel+aux_L100"} and "lr" in doc["settings"]["enum+aux_L100"]
    # each choice names the records behind it by commit (4 trials x 3 seeds), not only the folder's last command
    assert {k: sum(v.values()) for k, v in doc["records_by_commit"].items()} == {"enum+aux_L100": 12,
                                                                              "gumbel+aux_L100": 12}
    choices = (tmp_path / "tables" / "tune_choices.csv").read_text().splitlines()
    assert choices[0].endswith("beats,not_eligible,on_edge,trials") and len(choices) == 3
    rows = list(csv.DictReader(open(tmp_path / "tables" / "tune_choices.csv")))
    # the default trial (never pruned: it has no rival at its rungs) is found, though gumbel's schedule
    # options (rate, every) are set from the budget, not the record's defaults
    assert [r["paired_seeds"] for r in rows] == ["3", "3"] and all(r["default_valid_acc"] for r in rows)
    assert "successive-halving pruner" in (tmp_path / "tune.md").read_text()
    assert [r["trials"] for r in rows] == ["4 of 4", "4 of 4"]
    # a setting whose search has not finished is shown, not chosen
    last = max(int(p.stem[-3:]) for p in (tmp_path / "runs").glob("gumbel+aux_L100_s0_t*.json"))
    for p in (tmp_path / "runs").glob(f"gumbel+aux_L100_s*_t{last:03d}.json"):
        p.unlink()
    doc = tune_study.write_report(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "tables" / "tune_choices.csv")))
    assert set(doc["settings"]) == {"enum+aux_L100"} and [r["trials"] for r in rows] == ["4 of 4", "3 of 4"]


def test_the_pruner_sees_the_best_validation_accuracy_so_far_not_the_last():
    """A trial is chosen by its seeds' best validation accuracy (the test accuracy is read at that epoch), so the
    pruner must see the same number: gumbel + aux at 100 labels in Pyro's setting peaked at 0.52 by epoch 7 and
    fell to 0.34 by epoch 54, where it was pruned beside a trial whose best was 0.43."""
    peak_then_fall = [{"valid_acc": a} for a in (0.40, 0.52, 0.45, 0.34)]
    climbing = [{"valid_acc": a} for a in (0.10, 0.20, 0.30, 0.43)]
    assert search.objective_so_far([peak_then_fall, peak_then_fall]) == pytest.approx(0.52)
    assert search.objective_so_far([peak_then_fall, climbing]) == pytest.approx((0.52 + 0.43) / 2)
    assert search.objective_so_far([peak_then_fall[:1], climbing[:1]]) == pytest.approx(0.25)


def test_a_search_from_its_own_setting_compares_the_choice_with_that_setting(tmp_path, monkeypatch):
    """The search-table1 preset starts from Pyro's Table 1 setting (lr 3e-4, aux multiplier 300), not the
    defaults: its first trial is that setting, and the study's "default" (chosen_minus_default, the tie rule,
    the sensitivity plot's line) is the grid's learning rate and multiplier."""
    monkeypatch.setattr(search, "_load_data", _data)
    grid = gridmod.make_grid({**TINY, "estimators": ["gumbel"], "lr": 3e-4, "aux_multiplier": 300.0, "search": {
        "trials": 3, "first_rung": 1, "reduction": 2, "lr": {"low": 3e-5, "high": 3e-3},
        "aux_multiplier": {"low": 30.0, "high": 3000.0}}})
    assert search.run_search(grid, grid.search, tmp_path, None, log=lambda m: None) == 3
    (tmp_path / ENV_FILE).write_text(json.dumps({"preset": "test", "grid": grid.to_dict()}))
    doc = tune_study.write_report(tmp_path)
    row = next(csv.DictReader(open(tmp_path / "tables" / "tune_choices.csv")))
    assert row["default_valid_acc"] and row["paired_seeds"] == "3"  # the first trial, found as the default
    assert "minus the grid's learning rate 3e-4 and aux multiplier 300 with the estimator's default options" in (
        tmp_path / "tune.md").read_text()
    assert "ties: nearest the grid's lr 3e-4" in doc["rule"]


def test_a_setting_whose_lock_another_command_keeps_is_skipped(tmp_path, monkeypatch):
    """A command takes a setting's lock for moments (to take its next trial); one that keeps it (a search from
    before --workers held it for its whole run) makes the others skip the setting after GATE_TIMEOUT."""
    import multiprocessing

    monkeypatch.setattr(search, "_load_data", _data)
    monkeypatch.setattr(search, "GATE_TIMEOUT", 0.5)
    grid = _grid()
    messages = []
    ctx = multiprocessing.get_context("spawn")  # the other command: a process that holds enum + aux's lock
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(str(tmp_path / ".search-enum+aux_L100.lock"), ready, done))
    child.start()
    try:
        assert ready.wait(60)
        assert search.run_search(grid, grid.search, tmp_path, None, log=messages.append) == 4  # gumbel's only
    finally:
        done.set()
        child.join(60)
    assert "search: enum+aux_L100: another command holds its lock: skipped" in messages
    assert not list((tmp_path / "runs").glob("enum*")) and len(list((tmp_path / "runs").glob("gumbel*"))) == 12
    assert search.run_search(grid, grid.search, tmp_path, None, log=messages.append) == 4  # now enum's


def _hold(path, ready, done):
    from filelock import FileLock

    with FileLock(path):
        ready.set()
        done.wait(60)


def test_a_trial_advanced_epoch_by_epoch_has_the_numbers_of_one_uninterrupted_run(tmp_path):
    grid = _grid()
    cfg = search.trial_config(grid, "gumbel", True, 100, 1, {"lr": 3e-3, "tau0": 0.5, "tau_min": 0.5})
    data = _data(cfg)
    state = None
    for _ in range(cfg.epochs):
        state = search._one_epoch(cfg, data, state)
    straight = train(cfg, data, evaluation=search.EVALUATION)
    assert [r["valid_acc"] for r in state["curves"]] == [r["valid_acc"] for r in straight.curves]
    assert [r["loss_unsup"] for r in state["curves"]] == [r["loss_unsup"] for r in straight.curves]


def test_a_trial_cut_short_is_tried_again(tmp_path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    study = search._study(storage, "enum+aux_L100", {"seed": 0, "first_rung": 1, "reduction": 2})
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=2)
    cut = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})  # a kill leaves it RUNNING
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    live = study.ask(lr)  # another command's trial, running: its lock is held
    assert search._resume(study, lr, alive=lambda number: number == live.number) == (2, 0, 1)
    trials = study.get_trials()
    assert trials[cut.number].state == optuna.trial.TrialState.FAIL
    assert trials[live.number].state == optuna.trial.TrialState.RUNNING  # not taken for one cut short
    assert trials[-1].state == optuna.trial.TrialState.WAITING and trials[-1].system_attrs["fixed_params"] == cut.params
    assert trials[-1].user_attrs[search.RESUMES] == cut.number  # it continues the cut trial's saved epochs


def _cutter(one_epoch, calls):
    """``cut_at(n)``: a ``_one_epoch`` that counts its calls in ``calls`` and interrupts the n-th (a session's end)."""
    def cut_at(n):
        def counted(cfg, data, state):
            calls.append(cfg.seed)
            if len(calls) == n:
                raise KeyboardInterrupt
            return one_epoch(cfg, data, state)
        return counted
    return cut_at


def test_a_trial_cut_short_goes_on_from_its_last_finished_epoch(tmp_path, monkeypatch):
    """An interrupt during epoch 3 of 4 (a session's end): the next command runs the trial's values again from the
    saved epoch 2, trains only epochs 3 and 4, reports every epoch to the pruner in order, and records the numbers
    an uninterrupted search records; the saved state goes when the trial ends."""
    monkeypatch.setattr(search, "_load_data", _data)
    table = {"trials": 1, "first_rung": 1, "reduction": 2, "lr": {"low": 1e-4, "high": 1e-2}}
    grid = gridmod.make_grid({**TINY, "epochs": 4, "estimators": ["gumbel"], "search": table})
    straight = tmp_path / "straight"
    assert search.run_search(grid, grid.search, straight, None, log=lambda m: None) == 1
    one_epoch, calls = search._one_epoch, []
    cut_at = _cutter(one_epoch, calls)
    out = tmp_path / "cut"
    monkeypatch.setattr(search, "_one_epoch", cut_at(2 * 3 + 1))  # 3 seeds x 2 epochs, then the interrupt
    with pytest.raises(KeyboardInterrupt):
        search.run_search(grid, grid.search, out, None, log=lambda m: None)
    assert len(list((out / "cache" / "search").glob("*.pt"))) == 1 and not list((out / "runs").glob("*.json"))
    calls.clear()
    monkeypatch.setattr(search, "_one_epoch", cut_at(0))
    messages = []
    assert search.run_search(grid, grid.search, out, None, log=messages.append) == 1
    assert len(calls) == 3 * 2  # epochs 3 and 4 only
    assert any("trial 1: resumed from epoch 2 of 4" in m for m in messages), messages
    assert not list((out / "cache" / "search").glob("*.pt"))
    for seed in (0, 1, 2):
        a = json.loads((straight / "runs" / f"gumbel+aux_L100_s{seed}_t000.json").read_text())
        b = json.loads((out / "runs" / f"gumbel+aux_L100_s{seed}_t001.json").read_text())
        assert b["resumed_from_epoch"] == 2 and b["status"] == a["status"] == "ok"
        for key in ("valid_acc", "loss_unsup", "loss_aux", "global_step"):
            assert [r[key] for r in b["curves"]] == [r[key] for r in a["curves"]]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / search.JOURNAL)))
    trials = optuna.load_study(study_name="gumbel+aux_L100", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert trials[1].params == trials[0].params and trials[1].user_attrs[search.RESUMES] == 0
    assert sorted(trials[1].intermediate_values) == [1, 2, 3, 4]


IDENT = {"data_sha256": {"train-images-idx3-ubyte": "synthetic"}, "torch": "2.0", "pyro": "1.9"}


def _as_grid_cells(search_out, grid_out):
    """The search's trial-0 records written as a grid's finished cells (a reference's runs/), as the harness
    writes them: the cell id, the config, every epoch's curve (test accuracy included), the identity."""
    (grid_out / "runs").mkdir(parents=True)
    for p in sorted((search_out / "runs").glob("*_t000.json")):
        rec = json.loads(p.read_text())
        cell = {"id": p.stem[:-5], "kind": "train", "status": "ok", "config": rec["config"], "device_name": "CPU X",
                "curves": [{**row, "test_acc": 0.5} for row in rec["curves"]],
                "identity": {"data_sha256": IDENT["data_sha256"],
                             "distributions": {"torch": IDENT["torch"], "pyro-ppl": IDENT["pyro"]}}}
        (grid_out / "runs" / f"{cell['id']}.json").write_text(json.dumps(cell))


def test_a_trial_whose_seeds_a_grid_has_run_takes_their_curves(tmp_path, monkeypatch):
    """``--reuse``: the default first trial's three seeds are finished cells of a grid (same config, data, torch and
    pyro): nothing trains, the pruner and the records get the cells' curves (no test number), and the records name
    the cells. Another torch, a cell of another configuration or a seed without a cell: the trial trains."""
    monkeypatch.setattr(search, "_load_data", _data)
    table = {"trials": 1, "first_rung": 1, "reduction": 2, "lr": {"low": 1e-4, "high": 1e-2}}
    grid = gridmod.make_grid({**TINY, "estimators": ["gumbel"], "search": table})
    straight = tmp_path / "straight"
    assert search.run_search(grid, grid.search, straight, None, log=lambda m: None) == 1
    _as_grid_cells(straight, tmp_path / "grid")
    one_epoch, calls = search._one_epoch, []
    monkeypatch.setattr(search, "_one_epoch",
                        lambda cfg, data, state: calls.append(cfg.seed) or one_epoch(cfg, data, state))
    messages = []
    out = tmp_path / "reused"
    assert search.run_search(grid, grid.search, out, None, log=messages.append, reuse=[tmp_path / "grid"],
                             ident=IDENT) == 1
    assert calls == [] and any("trial 0: its 3 seeds' runs are finished cells" in m for m in messages), messages
    for seed in (0, 1, 2):
        a = json.loads((straight / "runs" / f"gumbel+aux_L100_s{seed}_t000.json").read_text())
        b = json.loads((out / "runs" / f"gumbel+aux_L100_s{seed}_t000.json").read_text())
        assert b["curves"] == a["curves"] and b["metrics"] == a["metrics"] and b["status"] == "ok"
        assert b["reused_from"].endswith(f"gumbel+aux_L100_s{seed}.json") and b["reused_device"] == "CPU X"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / search.JOURNAL)))
    trial = optuna.load_study(study_name="gumbel+aux_L100", storage=storage).get_trials()[0]
    assert sorted(trial.intermediate_values) == [1, 2, 3]  # every epoch reported to the pruner, in order
    (out / ENV_FILE).write_text(json.dumps({"preset": "test", "grid": grid.to_dict()}))
    tune_study.write_report(out)
    assert (f"Not trained again (`--reuse`): gumbel+aux_L100 trial 0 ({tmp_path / 'grid'}, trained on CPU X)"
            in (out / "tune.md").read_text())
    cfgs = {s: search.trial_config(grid, "gumbel", True, 100, s, values_of(trial.params)) for s in (0, 1, 2)}
    assert finished_cells([tmp_path / "grid"], cfgs, {**IDENT, "torch": "2.1"}) == {}
    assert finished_cells([tmp_path / "grid"], {**cfgs, 3: dataclasses.replace(cfgs[0], seed=3)}, IDENT) == {}
    other = {s: dataclasses.replace(cfg, lr=1e-3) for s, cfg in cfgs.items()}
    assert finished_cells([tmp_path / "grid"], other, IDENT) == {}
    assert len(finished_cells([tmp_path / "grid"], cfgs, IDENT)) == 3


def test_a_trial_cut_short_is_no_rival_of_its_own_run_again(tmp_path):
    """The pruner leaves out the rung values of a trial cut short: run again, it reaches the same rungs with the
    same values and would otherwise compete with its earlier run (and another trial with both)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    study = search._study(storage, "gumbel+aux_L100", {"seed": 0, "first_rung": 1, "reduction": 2})
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    done = study.ask(lr)
    done.report(0.5, 1)
    assert not done.should_prune()
    study.tell(done, 0.5)
    cut = study.ask(lr)
    cut.report(0.9, 1)
    assert not cut.should_prune()  # at rung 0 now, then killed
    search._try_again(study, cut)
    other = study.ask(lr)  # the cut trial's values run again: it reaches rung 0 later
    assert other.params == cut.params
    other.report(0.7, 1)
    # rivals 0.5 and itself: the best of two goes on (with the cut run's 0.9 among them it would be pruned)
    assert not other.should_prune()


def test_a_trial_is_alive_while_a_process_holds_its_lock(tmp_path):
    alive = search._alive(tmp_path, "enum+aux_L100")
    assert not alive(3)
    with search._trial_lock(tmp_path, "enum+aux_L100", 3):
        assert _held_elsewhere(str(tmp_path / ".search-enum+aux_L100-t003.lock"))
    assert not alive(3)


def _held_elsewhere(path):
    """Whether another process finds the lock at ``path`` taken (a flock is per process)."""
    import subprocess
    import sys

    code = ("import sys; from filelock import FileLock, Timeout\n"
            "try:\n    FileLock(sys.argv[1]).acquire(timeout=0)\nexcept Timeout:\n    sys.exit(3)\n")
    return subprocess.run([sys.executable, "-c", code, path]).returncode == 3


def test_workers_share_a_settings_trials_without_running_more(tmp_path, monkeypatch):
    """Two processes searching one setting run its trials between them, each trial once and no more than
    ``trials`` in all; each trial's records are its own; a later command finds the setting done."""
    import multiprocessing

    monkeypatch.setattr(search, "_load_data", _data)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_search_worker, args=(str(tmp_path), w, results)) for w in (0, 1)]
    for p in procs:
        p.start()
    ran = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(isinstance(n, int) for n in ran), ran
    assert sum(ran) == 5 and all(p.exitcode == 0 for p in procs)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / search.JOURNAL)))
    trials = optuna.load_study(study_name="gumbel+aux_L100", storage=storage).get_trials()
    assert len(trials) == 5 and {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE,
                                                              optuna.trial.TrialState.PRUNED}
    assert trials[0].params["lr"] == pytest.approx(_grid().lr)  # the default first, whoever took it
    assert len(list(tmp_path.glob("runs/gumbel+aux_L100_s*_t*.json"))) == 15
    grid = _grid(trials=5)
    assert search._run_setting(storage, grid, grid.search, "gumbel", True, 100, tmp_path, None, "c",
                               lambda m: None) == 0


def test_a_search_stopped_with_sigterm_leaves_no_worker_running(tmp_path):
    """``--workers 2``: the second process trains in a pool; SIGTERM to the command must not leave it training
    on alone (it did, for the rest of its trial, holding a core the next command wanted)."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    code = ("import os, time\nfrom bench.run import search\n"
            "pool = search.worker_pool(1)\nprint(pool.submit(os.getpid).result(), flush=True)\n"
            "pool.submit(time.sleep, 600)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(search.Path(search.__file__).resolve().parents[2])})
    child = int(proc.stdout.readline())
    assert psutil.pid_exists(child)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    deadline = time.time() + 20
    while time.time() < deadline and psutil.pid_exists(child) and psutil.Process(child).status() != "zombie":
        time.sleep(0.2)
    alive = psutil.pid_exists(child) and psutil.Process(child).status() != "zombie"
    if alive:
        psutil.Process(child).kill()
    assert not alive


def _search_worker(out, worker, results):
    """One of the processes of the test above: the setting gumbel + aux at 100 labels, 5 trials, synthetic data."""
    from pathlib import Path

    search._load_data = _data
    grid = _grid(trials=5)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(Path(out) / search.JOURNAL)))
    try:
        results.put(search._run_setting(storage, grid, grid.search, "gumbel", True, 100, Path(out), None, "c",
                                        lambda m: None, worker=worker, parallel=True))
    except Exception as e:  # noqa: BLE001 -- reported to the test
        results.put(repr(e))


@pytest.mark.parametrize("space, values, expected", [
    ({"lr": ["range", 1e-4, 1e-2]}, {"lr": 9.5e-3}, "lr at the top of 0.0001..0.01"),
    ({"lr": ["range", 1e-4, 1e-2]}, {"lr": 1e-3}, ""),
    ({"k": ["choices", [2, 4, 10]]}, {"k": 2}, "k at the bottom of 2..10"),
    ({"k": ["choices", [2, 4, 10]]}, {"k": 4}, ""),
    # a choice among option sets (gumbel's schedule): each option that differs between the sets is its own list
    ({"schedule": ["choices", [{"tau0": 1.0, "tau_min": 0.5}, {"tau0": 0.5, "tau_min": 0.5}]]},
     {"tau0": 0.5, "tau_min": 0.5}, "tau0 at the bottom of 0.5..1"),
    ({"schedule": ["choices", [{"tau0": 1.0, "tau_min": 0.5}, {"tau0": 0.5, "tau_min": 0.5}, {"tau0": 0.7,
                                                                                            "tau_min": 0.5}]]},
     {"tau0": 0.7, "tau_min": 0.5}, ""),
])
def test_a_choice_on_an_edge_of_what_was_searched_is_named(space, values, expected):
    prov = {"search": {"space": {"rloo": space}}}
    assert tune_study.edges(prov, "rloo", values) == expected
    grid_prov = {"tune": {"lr": [1.4e-4, 4.2e-4, 1.26e-3]}}
    assert tune_study.edges(grid_prov, "enum", {"lr": 1.26e-3}) == "lr at the top of 0.00014..0.00126"


@pytest.mark.skipif(not os.environ.get("SSVAE_DATA_DIR"), reason="MNIST not found (set SSVAE_DATA_DIR)")
def test_the_search_command_continues_its_folder_and_tune_chooses_from_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(search, "_load_data", _data)  # MNIST is checked; the trials train on synthetic digits
    preset = tmp_path / "tiny.toml"
    preset.write_text('estimators = ["enum"]\naux = [true]\nbaseline = false\nlabels = [100]\nseeds = 3\n'
                      'epochs = 2\nbatch_size = 50\nhidden = [16]\nz_dim = 4\nsteps_per_epoch = 2\n'
                      '[search]\ntrials = 2\nlr = {low = 1e-4, high = 1e-2}\n')
    out = tmp_path / "out"
    args = ["search", "--preset", str(preset), "--out", str(out), "--threads", "1"]
    assert main(args) == 0
    assert "2 trial(s) run" in capsys.readouterr().err
    assert main(args) == 0  # the same command continues the folder: nothing left
    assert "0 trial(s) run" in capsys.readouterr().err
    env = json.loads((out / ENV_FILE).read_text())
    assert env["grid"]["search"]["trials"] == 2 and len(env["earlier_runs"]) == 1
    assert main(["search", "--preset", str(preset), "--out", str(out), "--epochs", "3"]) == 2  # another search
    assert "holds another search or grid" in capsys.readouterr().err
    assert main(["tune", str(out)]) == 0 and (out / "tuned.json").is_file()


def test_a_folder_holds_any_settings_of_one_search_and_refuses_another():
    preset = gridmod.load_preset("search")

    def env(**over):
        return {"preset": "search", "grid": gridmod.make_grid(preset, over).to_dict()}

    first = env(estimators=["gumbel-st"], aux=[True], labels=[3000])
    merged = search_cli.merged_grid(first, env(estimators=["enum", "gumbel-st"], aux=[False], labels=[100])["grid"], "out")
    assert merged["estimators"] == ["gumbel-st", "enum"] and merged["aux"] == [False, True]
    assert merged["labels"] == [100, 3000] and set(merged["search"]["space"]) == {"gumbel-st", "enum"}
    again = search_cli.merged_grid({"preset": "search", "grid": merged}, first["grid"], "out")
    assert again == json.loads(json.dumps(merged))  # searching a setting again changes nothing
    for other in (env(estimators=["enum"], epochs=10), env(estimators=["enum"], seeds=4), env(estimators=["enum"], lr=1e-3)):
        with pytest.raises(ConfigError, match="out holds another search or grid"):
            search_cli.merged_grid(first, other["grid"], "out")
    with pytest.raises(ConfigError, match="holds another search or grid"):  # a grid's folder
        search_cli.merged_grid({"preset": "quick", "grid": gridmod.make_grid(gridmod.load_preset("quick")).to_dict()},
                           first["grid"], "out")
    narrow = gridmod.make_grid({**preset, "search": {**preset["search"], "gumbel-st": {"lr": {"low": 1e-4, "high": 1e-3}}}},
                               {"estimators": ["gumbel-st"], "aux": [True], "labels": [3000]})
    with pytest.raises(ConfigError, match="searched gumbel-st over another space"):
        search_cli.merged_grid(first, narrow.to_dict(), "out")


@needs_mnist
def test_a_folder_in_use_is_refused_before_anything_is_written(tmp_path, capsys):
    from bench.core.store import OutputLock

    with OutputLock(tmp_path / "s"):
        assert main(["search", "--estimators", "gumbel-st", "--aux", "on", "--labels", "3000",
                     "--out", str(tmp_path / "s")]) == 2
    assert "is in use by another" in capsys.readouterr().err
    assert not (tmp_path / "s" / ENV_FILE).exists() and not (tmp_path / "s" / search.JOURNAL).exists()


def test_a_search_made_by_several_commands_names_each_and_the_records_commits(tmp_path):
    grid = _grid()
    env = {"preset": "test", "grid": grid.to_dict(), "git_commit": "b" * 40, "command": "python -m bench search B",
           "date": "d2", "threads": 1, "earlier_runs": [{"git_commit": "a" * 40, "command": "python -m bench search A",
                                                          "date": "d1", "threads": 1, "tasks_run": None}]}
    (tmp_path / ENV_FILE).write_text(json.dumps(env))
    (tmp_path / "runs").mkdir()
    for i, commit in enumerate(["a" * 40, "a" * 40, "b" * 40]):
        (tmp_path / "runs" / f"r{i}.json").write_text(json.dumps({"git_commit": commit}))
    prov = tune_study.provenance(tmp_path)
    assert tune_plots._commits(prov) == f"commits {'a' * 10} (2 records), {'b' * 10} (1 records)"
    lines = parts_lines(prov["parts"], search=True)
    assert lines[0].startswith("Made in 2 parts (each command searched the settings it names")
    assert "`python -m bench search A`: commit aaaaaaaaaa" in lines[2] and "search B" in lines[3]
    assert "x all steps" not in tune_plots.provenance_line({**prov, "steps_per_epoch": 3})


def test_a_range_widened_after_an_edge_choice_goes_on_in_the_same_study(tmp_path, monkeypatch):
    """A space that contains the folder's widens it: env.json keeps the earlier one, the setting's study runs
    `trials` more trials from the wider space (its sampler seeing the earlier ones), and the tuning study plans
    both spaces' trials and judges edges against the wider range. A space that does not contain it is refused."""
    monkeypatch.setattr(search, "_load_data", _data)
    narrow = _grid(enum={"lr": {"low": 1e-4, "high": 2e-4}})
    wide = _grid(enum={"lr": {"low": 1e-4, "high": 1e-2}})
    assert search_cli.widens(wide.search["space"]["enum"], narrow.search["space"]["enum"])
    assert not search_cli.widens(narrow.search["space"]["enum"], wide.search["space"]["enum"])
    assert not search_cli.widens(_grid(enum={"lr": {"low": 1.5e-4, "high": 1e-2}}).search["space"]["enum"],
                             narrow.search["space"]["enum"])  # wider at the top, narrower at the bottom
    one = {"preset": "test", "grid": narrow.to_dict()}
    merged = search_cli.merged_grid(one, wide.to_dict(), tmp_path)
    assert merged["search"]["space"]["enum"]["lr"] == ["range", 1e-4, 1e-2]
    assert merged["search"]["widened"] == {"enum": [{"lr": ["range", 1e-4, 2e-4]}]}
    assert "widened" not in search_cli.merged_grid(one, narrow.to_dict(), tmp_path)["search"]  # the same space
    with pytest.raises(ConfigError, match="searched enum over another space, one this space does not contain"):
        search_cli.merged_grid({"preset": "test", "grid": merged}, narrow.to_dict(), tmp_path)

    assert search.run_search(narrow, narrow.search, tmp_path, None, log=lambda m: None) == 8
    said = []
    assert search.run_search(wide, wide.search, tmp_path, None, log=said.append) == 4  # enum: 4 more; gumbel: done
    assert "enum+aux_L100: 4 trial(s) to run (0 done; 4 over an earlier, narrower space)" in said[0]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / search.JOURNAL)))
    trials = optuna.load_study(study_name="enum+aux_L100", storage=storage).get_trials()
    assert len(trials) == 8 and all(t.distributions["lr"].high == 2e-4 for t in trials[:4])
    assert all(t.distributions["lr"].high == 1e-2 for t in trials[4:])
    assert search.run_search(wide, wide.search, tmp_path, None, log=lambda m: None) == 0  # nothing left
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("enum+aux_L100_s0_t*.json")]
    assert sorted(r["search"]["space"]["lr"][2] for r in records) == [2e-4] * 4 + [1e-2] * 4
    for r in records[:2]:  # records written before spaces were recorded count as the first space
        del r["search"]["space"]
    (tmp_path / ENV_FILE).write_text(json.dumps({"preset": "test", "grid": merged}))
    tune_study.write_report(tmp_path)
    rows = {r["estimator"]: r for r in csv.DictReader(open(tmp_path / "tables" / "tune_choices.csv"))}
    assert rows["enum + aux"]["trials"] == "8 of 8" and rows["gumbel + aux"]["trials"] == "4 of 4"
    assert "Widened after a choice sat on an edge" in (tmp_path / "tune.md").read_text()
    assert "enum: lr 1e-4..2e-4 -> 1e-4..1e-2" in (tmp_path / "tune.md").read_text()
    # with the wider space's trials missing, the setting is unfinished: shown, not chosen
    for p in (tmp_path / "runs").glob("enum+aux_L100_s*_t*.json"):
        if json.loads(p.read_text())["search"]["trial"] >= 4:
            p.unlink()
    doc = tune_study.write_report(tmp_path)
    rows = {r["estimator"]: r for r in csv.DictReader(open(tmp_path / "tables" / "tune_choices.csv"))}
    assert rows["enum + aux"]["trials"] == "4 of 8" and "enum+aux_L100" not in doc["settings"]


def test_a_continued_study_draws_new_values_and_a_diverged_trial_is_the_worst_value(tmp_path, monkeypatch):
    """A search continued by a new command (a new sampler) does not propose its first values again, and a
    trial that diverges reports the worst value, so that the sampler learns to avoid its region (a failed
    trial taught it nothing: a widened gumbel range drew 14 diverging learning rates in 16 trials)."""
    from ssvae.errors import DivergedError

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    spec = {"seed": 0, "first_rung": 1, "reduction": 2}
    dist = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    search._study(storage, "s", spec).optimize(lambda t: t._suggest("lr", dist), n_trials=3)
    search._study(storage, "s", spec).optimize(lambda t: t._suggest("lr", dist), n_trials=3)  # a later command
    values = [t.params["lr"] for t in optuna.load_study(study_name="s", storage=storage).get_trials()]
    assert len(set(values)) == 6, values

    real = search._one_epoch

    def diverge_fast(cfg, data, state):
        if cfg.lr > 3e-3:
            raise DivergedError(0, 1, float("nan"), "unsup")
        return real(cfg, data, state)

    monkeypatch.setattr(search, "_one_epoch", diverge_fast)
    monkeypatch.setattr(search, "_load_data", _data)
    grid = _grid(lr={"low": 1e-4, "high": 1e-2}, trials=6)
    search.run_search(grid, grid.search, tmp_path / "out", None, log=lambda m: None)
    trials = optuna.load_study(study_name="gumbel+aux_L100", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "out" / search.JOURNAL)))).get_trials()
    diverged = [t for t in trials if t.user_attrs.get("status") == "diverged"]
    assert diverged and all(t.state == optuna.trial.TrialState.COMPLETE and t.value == search.DIVERGED_VALUE
                            for t in diverged)
    recs = [json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").glob("gumbel+aux_L100_s0_t*.json")]
    assert {r["status"] for r in recs if r["config"]["lr"] > 3e-3} == {"diverged"}
    assert search._resume(optuna.load_study(study_name="gumbel+aux_L100", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "out" / search.JOURNAL)))),
        search.distributions({k: v for k, v in grid.search["space"]["gumbel"].items()}))[0] == 6


def test_two_trials_of_the_same_values_are_two_trials_of_the_study(tmp_path):
    grid = _grid(trials=4)
    (tmp_path / "runs").mkdir()
    (tmp_path / ENV_FILE).write_text(json.dumps({"preset": "test", "grid": {**grid.to_dict(), "estimators": ["enum"]}}))
    chosen, lower = {"lr": 1e-3, "aux_multiplier": 46.0}, {"lr": 5e-4, "aux_multiplier": 46.0}
    for trial, status, values in ((0, "pruned", chosen), (1, "ok", chosen), (2, "pruned", lower), (3, "pruned", lower)):
        for seed in (0, 1, 2):
            cfg = search.trial_config(grid, "enum", True, 100, seed, values)
            state = {"curves": [{"epoch": e, "valid_acc": 0.5 + 0.1 * e, "loss_sup": 0, "loss_unsup": 0, "loss_aux": 0,
                                 "elapsed_seconds": e, "global_step": e} for e in range(1, 2 if status == "pruned" else 4)]}
            rec = search._record(cfg, trial, "enum+aux_L100", values, grid.search["space"]["enum"], status, state, "c")
            (tmp_path / "runs" / f"{rec['id']}.json").write_text(json.dumps(rec))
    doc = tune_study.write_report(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "tables" / "tune_choices.csv")))
    assert [r["trials"] for r in rows] == ["4 of 4"] and doc["settings"]["enum+aux_L100"]["lr"] == 1e-3
    assert rows[0]["valid_acc_mean"].startswith("0.8")  # the ok trial, not mixed with its pruned twin
    # not eligible: two distinct combinations (the chosen values' pruned trial, and lr 5e-4 pruned twice)
    assert rows[0]["not_eligible"] == "2"
    every = list(csv.DictReader(open(tmp_path / "tables" / "tune_all.csv")))
    assert sorted(r["trial"] for r in every) == ["0", "1", "2", "3"]  # every trial its row, named
    # where each stopped: a pruned trial its epochs and its seeds' best so far (epoch 1: 0.6), a finished one its own
    stopped = {r["trial"]: (r["epochs_run"], r["best_so_far"], r["n_seeds"]) for r in every}
    assert stopped["0"] == ("1", "0.6", "0") and stopped["1"] == ("3", "0.8", "3")
    assert "selection: `python -m bench tune " in (tmp_path / "tune.md").read_text()


def test_beats_counts_a_combination_two_trials_shared_once(tmp_path):
    grid = _grid(trials=3)
    (tmp_path / "runs").mkdir()
    (tmp_path / ENV_FILE).write_text(json.dumps({"preset": "test", "grid": {**grid.to_dict(), "estimators": ["enum"]}}))
    for trial, lr, top in ((0, 1e-3, 0.9), (1, 5e-4, 0.7), (2, 5e-4, 0.7)):  # trials 1 and 2: the same values
        values = {"lr": lr, "aux_multiplier": 46.0}
        for seed in (0, 1, 2):
            cfg = search.trial_config(grid, "enum", True, 100, seed, values)
            state = {"curves": [{"epoch": 1, "valid_acc": top + 0.01 * seed, "loss_sup": 0, "loss_unsup": 0,
                                 "loss_aux": 0, "elapsed_seconds": 1, "global_step": 1}]}
            rec = search._record(cfg, trial, "enum+aux_L100", values, grid.search["space"]["enum"], "ok", state, "c")
            (tmp_path / "runs" / f"{rec['id']}.json").write_text(json.dumps(rec))
    tune_study.write_report(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "tables" / "tune_choices.csv")))
    assert rows[0]["beats"] == "1" and rows[0]["trials"] == "3 of 3"


def test_the_search_figure_shows_every_trial_finished_pruned_or_diverged(tmp_path):
    grid = _grid(trials=3)
    (tmp_path / "runs").mkdir()
    env = {"preset": "test", "grid": {**grid.to_dict(), "estimators": ["enum"]}}
    (tmp_path / ENV_FILE).write_text(json.dumps(env))
    for trial, status, lr in ((0, "ok", 1e-3), (1, "pruned", 5e-4), (2, "diverged", 9e-3)):
        values = {"lr": lr, "aux_multiplier": 46.0 + trial}
        for seed in (0, 1, 2):
            cfg = search.trial_config(grid, "enum", True, 100, seed, values)
            epochs = {"ok": 3, "pruned": 1, "diverged": 0}[status]
            state = {"curves": [{"epoch": e, "valid_acc": 0.5 + 0.1 * e, "loss_sup": 0, "loss_unsup": 0, "loss_aux": 0,
                                 "elapsed_seconds": e, "global_step": e} for e in range(1, epochs + 1)]}
            rec = search._record(cfg, trial, "enum+aux_L100", values, grid.search["space"]["enum"], status, state, "c")
            (tmp_path / "runs" / f"{rec['id']}.json").write_text(json.dumps(rec))
    tune_study.write_report(tmp_path)
    assert (tmp_path / "plots" / "tune_sensitivity.png").stat().st_size > 10_000
    prov = tune_study.provenance(tmp_path)
    rows = tune_study.combinations(tmp_path, tune_study.tuned_space(prov))
    fig = tune_plots.search_figure(rows, tune_study.select(rows, tune_study.tuned_space(prov)), prov)
    ax = fig.axes[0]
    assert ax.get_title() == "enum + aux, 100 labels: 1 finished, 1 pruned, 1 diverged"
    drawn = {tuple(o) for c in ax.collections for o in c.get_offsets()}
    assert any(x == pytest.approx(9e-3) for x, _ in drawn)  # the diverged trial, on the floor
    assert any(x == pytest.approx(5e-4) and y == pytest.approx(0.6) for x, y in drawn)  # pruned after epoch 1
    assert any(x == pytest.approx(1e-3) and y == pytest.approx(0.8) for x, y in drawn)  # finished: best of 3 epochs


def test_a_trial_that_raises_is_recorded_failed_and_the_search_goes_on(tmp_path, monkeypatch):
    """One trial's error (here: the default trial's learning rate meets a fault) is the trial's record `failed`
    with the error's line, a log line, and a failed trial of the study that counts as run; the other trials run
    (before: the process searching stopped taking trials, silently in a worker)."""
    monkeypatch.setattr(search, "_load_data", _data)
    grid = gridmod.make_grid({**TINY, "estimators": ["enum"], "search": {"trials": 4, "first_rung": 1, "reduction": 2,
                                                                        "lr": {"low": 1e-4, "high": 1e-2}}})
    real = search._one_epoch

    def faulty(cfg, data, state):
        if cfg.lr == grid.lr:
            raise RuntimeError("boom\nsecond line")
        return real(cfg, data, state)

    monkeypatch.setattr(search, "_one_epoch", faulty)
    messages = []
    assert search.run_search(grid, grid.search, tmp_path, None, log=messages.append) == 4
    assert any("trial 0: failed after 0 epoch(s)" in m and m.endswith(": RuntimeError: boom") for m in messages)
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("enum+aux_L100_s*_t000.json"))]
    assert [r["status"] for r in recs] == ["failed"] * 3 and recs[0]["error"] == "RuntimeError: boom"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / search.JOURNAL)))
    trials = optuna.load_study(study_name="enum+aux_L100", storage=storage).get_trials()
    assert len(trials) == 4 and trials[0].state == optuna.trial.TrialState.FAIL
    assert all(t.state != optuna.trial.TrialState.FAIL for t in trials[1:])
    assert search.run_search(grid, grid.search, tmp_path, None, log=messages.append) == 0  # the failed one counts


def test_a_trial_run_again_is_not_judged_again_at_the_rungs_it_passed(tmp_path):
    """A cut trial passed the rungs at epochs 1 and 2; run again (from epoch 1: another CPU gives other numbers) it
    reaches epoch 1 with a value the first rung would prune: it goes on, its value recorded for later trials, and is
    judged from the epoch its first run reached (the old rule pruned it at epoch 1)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    study = search._study(storage, "trace+aux_L100", {"seed": 0, "first_rung": 1, "reduction": 2})
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    done = study.ask(lr)
    for step in (1, 2):
        done.report(0.9, step)
        assert not done.should_prune()
    study.tell(done, 0.9)
    cut = study.ask(lr)
    for step in (1, 2):
        cut.report(0.95, step)
        assert not cut.should_prune()  # the best at both rungs
    search._try_again(study, cut)
    again = study.ask(lr)
    assert again.params == cut.params and again.user_attrs[search.RESUMES] == cut.number
    again.report(0.1, 1)
    assert not again.should_prune()  # rung 1 passed by its first run
    assert study.get_trials()[again.number].system_attrs["completed_rung_0"] == 0.1  # a rival for the trials after
    again.report(0.1, 2)
    assert again.should_prune()  # rung 2: against the finished trial's 0.9, judged as any trial


def test_a_run_pruned_at_a_rung_its_line_had_passed_is_void_and_run_again(tmp_path, monkeypatch):
    """A search's journal from before the rule: trial 1 was cut at epoch 3, run again as trial 2 and pruned at epoch 1
    (the old pruner judged it again). The next command says trial 2 is void, rewrites its records as void, runs its
    values again (trial 3, to the end), counts 2 trials done, and tune.md lists the void run apart."""
    monkeypatch.setattr(search, "_load_data", _data)
    table = {"trials": 2, "first_rung": 1, "reduction": 2, "lr": {"low": 1e-4, "high": 1e-2}}
    grid = gridmod.make_grid({**TINY, "epochs": 4, "estimators": ["gumbel"], "search": table})
    out = tmp_path / "s"
    one_epoch, calls = search._one_epoch, []
    cut_at = _cutter(one_epoch, calls)
    monkeypatch.setattr(search, "_one_epoch", cut_at(3 * 4 + 3 * 2 + 1))  # trial 0's 4 epochs, trial 1's 2, cut
    with pytest.raises(KeyboardInterrupt):
        search.run_search(grid, grid.search, out, None, log=lambda m: None)
    for p in (out / "cache" / "search").glob("*.pt"):
        p.unlink()  # another machine: the run again starts over
    monkeypatch.setattr(search, "_one_epoch", one_epoch)
    monkeypatch.setattr(search_lines.Halving, "prune", lambda self, study, trial: trial.last_step == 1)  # the old rule
    with pytest.raises(KeyboardInterrupt):  # trial 2 pruned at epoch 1; then a kill ends the command
        monkeypatch.setattr(search, "_tell", _told_then_killed(search._tell))
        search.run_search(grid, grid.search, out, None, log=lambda m: None)
    monkeypatch.undo()
    monkeypatch.setattr(search, "_load_data", _data)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / search.JOURNAL)))
    study = optuna.load_study(study_name="gumbel+aux_L100", storage=storage)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL", "PRUNED"]
    assert search._resume(study, search.distributions(grid.search["space"]["gumbel"])) == (2, 0, 0)  # the old count
    messages = []
    assert search.run_search(grid, grid.search, out, None, log=messages.append) == 1
    assert any("trial 2: void, pruned at epoch 1, a rung its line (trial 1) had passed: an earlier run reached "
               "epoch 2; run again" in m for m in messages), messages
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "PRUNED", "COMPLETE"]
    assert trials[3].params == trials[1].params and trials[3].user_attrs[search_lines.VOIDS] == 2
    assert sorted(trials[3].intermediate_values) == [1, 2, 3, 4]  # run to the end
    assert search._resume(study, search.distributions(grid.search["space"]["gumbel"])) == (2, 0, 0)
    for seed in (0, 1, 2):
        rec = json.loads((out / "runs" / f"gumbel+aux_L100_s{seed}_t002.json").read_text())
        assert rec["status"] == "void" and rec["void"].startswith("pruned at epoch 1")
    (out / ENV_FILE).write_text(json.dumps({"preset": "test", "grid": grid.to_dict()}))
    tune_study.write_report(out)
    text = (out / "tune.md").read_text()
    assert "Void: gumbel+aux_L100 trial 2 (pruned at epoch 1, a rung its line (trial 1) had passed" in text
    choices = list(csv.DictReader(open(out / "tables" / "tune_choices.csv")))
    assert choices[0]["trials"] == "2 of 2" and choices[0]["not_eligible"] == "0"
    rows = list(csv.DictReader(open(out / "tables" / "tune_all.csv")))
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "void"]


def _told_then_killed(tell):
    """``_tell`` that lets one trial end as told, then interrupts the command (a session's end)."""
    def once(study, trial, objective):
        tell(study, trial, objective)
        raise KeyboardInterrupt
    return once
