"""bench.analysis.patience: early stopping replayed on finished validation curves, to choose a patience."""
import json

import pytest

from bench.analysis.patience import end_and_best, full_curves, main, replay


@pytest.mark.parametrize("valid, patience, expected", [
    ([0.1, 0.5, 0.4, 0.4, 0.6], 2, (4, 2)),     # two epochs without a better one: ends before the late best
    ([0.1, 0.5, 0.4, 0.4, 0.6], 3, (5, 5)),
    ([0.1, 0.5, 0.4, 0.4, 0.6], None, (5, 5)),  # no patience: every epoch
    ([0.3, 0.3, 0.3], 1, (2, 1)),               # a tie is no improvement: the first best wins
    ([0.1, 0.2, 0.3], 1, (3, 3)),
])
def test_the_run_ends_where_the_training_loop_would(valid, patience, expected):
    assert end_and_best(valid, patience) == expected


def test_replay_counts_the_cells_that_would_report_another_epoch():
    curves = [("trace + aux", [0.1, 0.5, 0.4, 0.4, 0.6]), ("trace + aux", [0.2, 0.3, 0.4, 0.5, 0.6]),
              ("gumbel + aux", [0.6, 0.5, 0.4, 0.3, 0.2])]
    t = replay(curves, [2, 3]).set_index(["variant", "patience"])
    assert t.loc[("trace + aux", 2)].tolist() == [2, 1, pytest.approx(0.1), pytest.approx(9 / 10)]
    assert t.loc[("trace + aux", 3)].tolist() == [2, 0, 0.0, 1.0]
    assert t.loc[("gumbel + aux", 2)].tolist() == [1, 0, 0.0, pytest.approx(3 / 5)]


def _record(folder, name, status, epochs, valid, reused_from=None, **config):
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    record = {"status": status, "kind": "train", **({"reused_from": reused_from} if reused_from else {}),
              "config": {"estimator": "enum", "aux": True, "epochs": epochs, **config},
              "curves": [{"epoch": i + 1, "valid_acc": v, "test_acc": 1.0} for i, v in enumerate(valid)]}
    (folder / "runs" / f"{name}.json").write_text(json.dumps(record))


def test_only_runs_that_trained_every_epoch_are_replayed(tmp_path, capsys):
    _record(tmp_path, "full", "ok", 3, [0.1, 0.3, 0.2])
    _record(tmp_path, "pruned", "pruned", 3, [0.1])                             # a search trial pruned
    _record(tmp_path, "stopped", "ok", 3, [0.4, 0.3], patience=1)               # already stopped early
    _record(tmp_path, "failed", "failed", 3, [])
    _record(tmp_path, "copy_t000", "ok", 3, [0.1, 0.3, 0.2], reused_from="grid/runs/full.json")  # --reuse: a copy
    _record(tmp_path, "again_t000", "ok", 3, [0.1, 0.3, 0.2])  # the same run trained again: the same numbers
    assert full_curves([tmp_path]) == [("enum + aux", [0.1, 0.3, 0.2])]
    assert main([str(tmp_path), "--patience", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 full-length runs from") and "enum + aux" in out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    (tmp_path / "runs").mkdir()
    assert main([str(tmp_path), "--patience", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("bench: error: ") for line in err)
    assert "no runs/ folder in" in err[0] and "patience must be >= 1" in err[1]
