"""The subnormal-floats measurement (``python -m bench.run.denormal_bench``, bench/run/denormal_bench.py): its
count of subnormal values, its rows per epoch, its two runs in two processes, its table, and its bad input."""
import dataclasses
import json

import pytest
import torch

from bench.run import denormal_bench as db

from .conftest import mnist_dir, needs_mnist

TINY = dict(labels=100, hidden=(16,), z_dim=4, batch_size=50, steps_per_epoch=3, epochs=2)


def _tiny(**over):
    return dataclasses.replace(db.config("enum", True, 100, 0, 4e-3, 17.0, 2), **{**TINY, **over})


def test_subnormals_counts_the_nonzero_values_below_the_smallest_normal_float():
    tiny = torch.finfo(torch.float32).tiny
    state = {"a": torch.tensor([tiny / 100, tiny, 0.0, -tiny / 10]), "b": [torch.tensor([1e-30]), {"c": 3}],
             "d": torch.tensor([1, 0]), "e": torch.tensor([1e-310], dtype=torch.float64)}
    assert db.subnormals(state) == 3  # two float32 values below tiny (either sign) and the float64 one


def test_the_config_is_the_search_trials_with_the_asked_values_and_length():
    cfg = db.config("enum", True, 3000, 2, 4.072e-3, 17.21, 14)
    assert (cfg.estimator, cfg.aux, cfg.labels, cfg.seed, cfg.epochs) == ("enum", True, 3000, 2, 14)
    assert (cfg.lr, cfg.aux_multiplier) == (4.072e-3, 17.21)
    assert db.config("gumbel", False, 100, 0, 1e-3, 17.21, 3).aux is False


def test_a_run_gives_a_row_per_epoch_and_flushing_changes_no_accuracy(synthetic_data):
    cfg = _tiny()
    kept = db.epoch_rows(cfg, synthetic_data, flush=False)
    assert [r["epoch"] for r in kept] == [1, 2]
    assert all(r["seconds"] >= 0 and 0 <= r["valid_acc"] <= 1 for r in kept)
    assert kept[-1]["elapsed_seconds"] == pytest.approx(sum(r["seconds"] for r in kept), abs=0.02)
    flushed = db.epoch_rows(cfg, synthetic_data, flush=True)
    assert [r["valid_acc"] for r in flushed] == [r["valid_acc"] for r in kept]
    assert all(r["subnormal_params"] == r["subnormal_optimiser"] == 0 for r in flushed)
    assert {r["flushing"] for r in kept} == {False} and {r["flushing"] for r in flushed} == {True}


def _result(contended=False):
    row = lambda e, s: {"epoch": e, "seconds": s, "elapsed_seconds": s, "valid_acc": 0.9, "subnormal_params": 0,
                        "subnormal_optimiser": 7 * e, "flushing": False}
    return {"rows": {"default": [row(1, 24.4), row(2, 31.6)], "flushed": [row(1, 25.3), row(2, 25.4)]},
            "config": _tiny().to_dict(), "side_by_side": True, "threads": 1, "cpu": "Intel(R) Xeon(R) Processor",
            "torch": "2.14.1", "pyro": "1.9.1", "python": "3.11", "commit": "abc1234", "seconds": 60.0,
            "other_cpu_load": 1.5 if contended else 0.1, "loadavg_1min": [0.1, 0.2], "contended": contended}


def test_the_table_has_both_ways_per_epoch_and_says_when_it_was_contended():
    text = db.markdown(_result())
    assert "| 2 | 31.6 | 25.4 | 0.9000 | 0.9000 | 0 | 14 |" in text
    assert "enum + aux, 100 labels, seed 0, lr 0.004, aux multiplier 17" in text and "uncontended" in text
    assert "**contended**: other processes kept 1.5 cores" in db.markdown(_result(contended=True))


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs and --labels must be at least 1"),
    (["--lr", "-1"], "--lr and --aux-multiplier above 0"),
    (["--estimator", "enumm"], "--estimator 'enumm' is not an estimator (known: trace, enum"),
    (["--data-dir", "/nonexistent-mnist", "--no-download"], "MNIST not found in /nonexistent-mnist"),
    (["--aux", "maybe"], "argument --aux: invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert db.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@needs_mnist
@pytest.mark.parametrize("cpus", [2, 1])
def test_both_ways_run_in_their_own_process_on_mnist(cpus, monkeypatch):
    monkeypatch.setattr(db, "usable_cpus", lambda: cpus)  # one CPU: one after the other, each in a fresh process
    result = db.run(_tiny(epochs=1, labels=100), str(mnist_dir()))
    assert set(result["rows"]) == {"default", "flushed"} and result["side_by_side"] is (cpus == 2)
    assert all(len(rows) == 1 for rows in result["rows"].values())
    assert [r["flushing"] for r in result["rows"]["default"]] == [False]  # the flushed run's mode never leaks
    assert [r["flushing"] for r in result["rows"]["flushed"]] == [True]
    assert result["config"]["epochs"] == 1 and json.dumps(result)
    assert "| 1 |" in db.markdown(result)


@needs_mnist
def test_bench_train_flushes_subnormals_as_a_grid_task_does(capsys):
    from bench.cli import main
    assert main(["train", "--estimator", "trace", "--aux", "--labels", "100", "--epochs", "1", "--steps-per-epoch",
                 "2", "--hidden", "16", "--z-dim", "4", "--no-progress", "--data-dir", str(mnist_dir())]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["flush_denormal"] is True and summary["estimator"] == "trace"
    assert torch.tensor(1e-39).item() == 0.0  # this process now flushes them


def test_a_measurement_writes_its_numbers_and_its_table(tmp_path):
    from bench.core.store import write_measurement
    write_measurement(tmp_path / "out", "denormal-epochs", _result(), db.markdown(_result()))
    text = (tmp_path / "out" / "denormal-epochs.json").read_text()
    assert json.loads(text) == _result()
    assert text == json.dumps(_result(), indent=1, sort_keys=True) + "\n"  # keys sorted: a rerun diffs cleanly
    assert (tmp_path / "out" / "denormal-epochs.md").read_text() == db.markdown(_result())
