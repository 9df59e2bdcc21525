"""The tune preset's grid, selection on validation accuracy only, the choice file and --tuned."""
import json
import subprocess
import sys

import pytest

from bench.run import grid as gridmod
from bench import cli
from bench.report import tune_study as tune_report
from bench.cli import build_parser
from bench.run.harness import grid_from_args
from ssvae.errors import ConfigError

from .conftest import REPO


def run_args(*argv):
    return build_parser().parse_args(["run", *argv])


def test_the_tune_preset_expands_into_one_cell_per_combination():
    grid = gridmod.make_grid(gridmod.load_preset("tune"))
    cells = [t for t in gridmod.expand(grid) if t["kind"] == "train"]
    ids = [t["id"] for t in cells]
    assert len(ids) == len(set(ids))  # the combinations are told apart in the ids
    per_est = {}
    for t in cells:
        cfg = t["config"]
        per_est.setdefault(cfg["estimator"], set()).add((cfg["lr"], json.dumps(cfg["options"], sort_keys=True)))
        assert cfg["aux"] and cfg["labels"] == 3000
        assert "lr" not in cfg["options"]  # lr is the run's learning rate, not an estimator option
    assert {lr for lr, _ in per_est["rloo"]} == {1.4e-4, 4.2e-4, 1.26e-3}
    assert len(per_est["gumbel"]) == 6 and len(per_est["nvil"]) == 6 and len(per_est["enum"]) == 3
    assert {json.loads(o)["tau0"] for _, o in per_est["gumbel-st"]} == {1.0, 0.5}
    assert len(cells) == 2 * sum(len(v) for v in per_est.values())  # 2 seeds
    assert "nvil+aux_L3000_s0_lr-0.00014_baseline_lr-0.0042" in ids


@pytest.mark.parametrize("bad, message", [
    ({"lr": [-1.0]}, "learning rates must be positive"),
    ({"lr": 0.001}, "non-empty list"),
    ({"nope": {"k": [1]}}, "unknown estimator"),
    ({"rloo": {"k": []}}, "non-empty list"),
])
def test_bad_tune_tables_are_one_line_errors(bad, message):
    preset = gridmod.load_preset("tune")
    preset["tune"] = bad
    with pytest.raises(ConfigError, match=message) as info:
        gridmod.make_grid(preset)
    assert "\n" not in str(info.value)


def test_a_bad_candidate_value_fails_before_anything_runs():
    preset = gridmod.load_preset("tune")
    preset["tune"] = {"rloo": {"k": [10, 1]}}
    with pytest.raises(ConfigError, match="k must be an integer >= 2"):
        gridmod.expand(gridmod.make_grid(preset))


def test_per_estimator_learning_rate_and_options_set_the_cell_config():
    grid = grid_from_args(run_args("--preset", "quick", "--set", "options.rloo.lr=0.0001",
                                   "--set", "options.rloo.k=4", "--estimators", "rloo,enum"))
    cfgs = {(c.estimator, c.aux, c.seed): c for c in gridmod.train_configs(grid)}
    assert cfgs[("rloo", True, 0)].lr == 0.0001 and cfgs[("rloo", True, 0)].option_dict == {"k": 4}
    assert cfgs[("enum", True, 0)].lr == 0.00042
    probe = [t for t in gridmod.expand(grid) if t["kind"] == "timing"][0]
    assert probe["options"]["rloo"] == {"k": 4}  # probes build estimators: no lr among their options
    with pytest.raises(ConfigError, match="options.rloo.lr must be a positive number"):
        grid_from_args(run_args("--preset", "quick", "--set", "options.rloo.lr=0"))


def _record(out, est, lr, seed, valid, test, status="ok", options=None):
    cfg = {"estimator": est, "aux": True, "labels": 3000, "seed": seed, "lr": lr, "options": options or {},
           "epochs": 2, "device": "cpu"}
    name = f"{est}_{lr}_{seed}_{json.dumps(options or {}, sort_keys=True)}".replace(" ", "")
    rec = {"kind": "train", "id": name, "status": status, "config": cfg,
           "metrics": {"best_valid_acc": valid, "test_acc_at_best_valid": test} if status == "ok" else None}
    (out / "runs" / f"{abs(hash(name))}.json").write_text(json.dumps(rec))


@pytest.fixture
def tuning_run(tmp_path):
    out = tmp_path / "tune-cpu"
    (out / "runs").mkdir(parents=True)
    t = {"lr": [1.4e-4, 4.2e-4, 1.26e-3], "nvil": {"baseline_lr": [4.2e-4, 4.2e-3]}}
    (out / "env.json").write_text(json.dumps({"preset": "tune", "git_commit": "abc", "date": "d",
                                              "device_name": "cpu", "command": "python -m bench run --preset tune",
                                              "grid": {"tune": t, "labels": [3000], "seeds": [0, 1],
                                                       "epochs": 2, "steps_per_epoch": 60}}))
    # rloo: validation prefers 1.4e-4, TEST would prefer 1.26e-3
    for seed, d in ((0, 0.0), (1, 0.01)):
        _record(out, "rloo", 1.4e-4, seed, 0.60 + d, 0.50)
        _record(out, "rloo", 4.2e-4, seed, 0.55 + d, 0.55)
        _record(out, "rloo", 1.26e-3, seed, 0.40 + d, 0.90)
    # enum: the best mean has a diverged seed: not eligible
    _record(out, "enum", 1.26e-3, 0, 0.95, 0.95)
    _record(out, "enum", 1.26e-3, 1, None, None, status="diverged")
    for lr in (1.4e-4, 4.2e-4):
        for seed in (0, 1):
            _record(out, "enum", lr, seed, 0.7 if lr == 4.2e-4 else 0.6, 0.7)
    # trace: a tie: the learning rate nearest Pyro's wins
    for lr in (1.4e-4, 4.2e-4, 1.26e-3):
        for seed in (0, 1):
            _record(out, "trace", lr, seed, 0.3, 0.3)
    for blr in (4.2e-4, 4.2e-3):
        for seed in (0, 1):
            _record(out, "nvil", 4.2e-4, seed, 0.5 if blr == 4.2e-4 else 0.52, 0.1, options={"baseline_lr": blr})
    return out


def test_selection_reads_validation_accuracy_only(tuning_run):
    doc = tune_report.write_report(tuning_run)
    ests = doc["settings"]  # a choice per setting: these were tuned with aux at 3000 labels
    assert ests["rloo+aux_L3000"] == {"lr": 1.4e-4}
    assert ests["enum+aux_L3000"] == {"lr": 4.2e-4}  # 1.26e-3 had a diverged seed
    assert ests["trace+aux_L3000"] == {"lr": 4.2e-4}
    assert ests["nvil+aux_L3000"] == {"lr": 4.2e-4, "baseline_lr": 4.2e-3}
    assert doc["selected_on"] == "best_valid_acc"
    saved = json.loads((tuning_run / "tuned.json").read_text())
    assert saved["settings"] == ests and saved["source"]["preset"] == "tune"
    choices = (tuning_run / "tables" / "tune_choices.csv").read_text()
    assert "rloo + aux" in choices and "0.05" in choices  # chosen minus Pyro's default, paired
    assert "diverged" in (tuning_run / "tables" / "tune_all.md").read_text()
    assert (tuning_run / "plots" / "tune_sensitivity.png").stat().st_size > 10_000
    assert "Tuning on validation data" in (tuning_run / "tune.md").read_text()


def test_selection_does_not_change_when_test_accuracy_does(tuning_run):
    first = tune_report.write_report(tuning_run)["settings"]
    for path in (tuning_run / "runs").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["metrics"]:
            rec["metrics"]["test_acc_at_best_valid"] = 1.0 - rec["metrics"]["test_acc_at_best_valid"]
            path.write_text(json.dumps(rec))
    assert tune_report.write_report(tuning_run)["settings"] == first


def test_tuned_file_applies_to_its_settings_only_and_set_still_overrides(tuning_run, capsys):
    tune_report.write_report(tuning_run)
    path = str(tuning_run / "tuned.json")
    args = run_args("--preset", "quick", "--tuned", path, "--estimators", "rloo,nvil,trace-avg",
                    "--set", "options.nvil.lr=0.002")
    grid = grid_from_args(args)
    cfgs = {(c.estimator, c.aux, c.labels, c.seed): c for c in gridmod.train_configs(grid)}
    assert cfgs[("rloo", True, 3000, 0)].lr == 1.4e-4  # the setting it was tuned at
    assert cfgs[("rloo", True, 100, 0)].lr == 0.00042 and cfgs[("rloo", False, 3000, 0)].lr == 0.00042  # others: not
    assert cfgs[("nvil", True, 3000, 1)].lr == 4.2e-4  # the setting's choice is nearer the cell than --set's estimator
    assert cfgs[("nvil", False, 3000, 1)].lr == 0.002
    assert cfgs[("nvil", True, 3000, 1)].option_dict == {"baseline_lr": 4.2e-3}
    assert cfgs[("nvil", False, 3000, 1)].option_dict == {}
    assert cfgs[("trace-avg", True, 100, 0)].lr == 0.00042  # not in the file: untouched
    assert args.tuned_info["file"] == path and len(args.tuned_info["sha256"]) == 64
    assert args.tuned_info["chosen"]["rloo+aux_L3000"] == {"lr": 1.4e-4}
    assert "rloo_L100" in args.tuned_info["without_choice"] and "rloo+aux_L3000" not in args.tuned_info["without_choice"]
    err = capsys.readouterr().err
    assert "chooses nothing for rloo_L100, rloo+aux_L100, nvil_L100, nvil+aux_L100" in err and "rloo+aux_L3000" not in err


def test_an_estimators_choice_file_still_applies_to_every_setting_and_aux_multiplier_sets_the_run(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"estimators": {"gumbel": {"lr": 3e-3, "aux_multiplier": 89.0, "tau0": 0.5}}}))
    grid = grid_from_args(run_args("--preset", "quick", "--tuned", str(path), "--estimators", "gumbel,enum"))
    for c in gridmod.train_configs(grid):
        if c.estimator == "gumbel":
            assert (c.lr, c.aux_multiplier, c.option_dict["tau0"]) == (3e-3, 89.0, 0.5)
            assert "aux_multiplier" not in c.option_dict and "lr" not in c.option_dict
        elif c.estimator == "enum":
            assert (c.lr, c.aux_multiplier) == (4.2e-4, 46.0)
    with pytest.raises(ConfigError, match="options.gumbel.aux_multiplier must be a positive number"):
        grid_from_args(run_args("--preset", "quick", "--set", "options.gumbel.aux_multiplier=-1"))


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it"),
    ("not json", "not a JSON file"),
    ('{"x": 1}', "no 'settings' or 'estimators' table"),
])
def test_a_bad_choice_file_is_a_one_line_usage_error(tmp_path, content, message):
    path = tmp_path / "tuned.json"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--preset", "smoke", "--tuned", str(path),
                           "--dry-run", "--out", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("bench: error: --tuned") and message in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_tune_command_on_a_folder_that_is_not_a_tuning_run(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "env.json").write_text(json.dumps({"grid": {}}))
    assert cli.main(["tune", str(tmp_path)]) == 2


def test_tune_command_on_a_search_with_no_finished_trial_says_so(tmp_path, capsys):
    """A search's folder before its first trial ends has a journal and no runs/: say that, not "run the tune
    preset first" (the advice for a grid)."""
    (tmp_path / "env.json").write_text(json.dumps({"grid": {}}))
    (tmp_path / "search.journal").write_text("")
    assert cli.main(["tune", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no trial of this search has finished yet" in err and "--preset tune" not in err and err.count("\n") == 1


def test_a_folder_made_in_parts_lists_every_command():
    from bench.report.common import parts_lines

    one = {"parts": [{"command": "run a", "git_commit": "abc", "threads": 1, "date": "d1", "tasks_run": ["x"]}]}
    assert parts_lines(one["parts"]) == []
    two = {"parts": [*one["parts"], {"command": "run b", "git_commit": "def", "threads": 2, "date": "d2",
                                     "tasks_run": ["y", "z"]}]}
    lines = parts_lines(two["parts"])
    assert lines[0].startswith("Made in 2 parts")
    assert "- `run a`: 1 task, commit abc, 1 thread(s) per task, d1" in lines
    assert "- `run b`: 2 tasks, commit def, 2 thread(s) per task, d2" in lines


def test_a_choice_file_a_reference_applied_still_applies_what_it_recorded():
    """A committed reference names the choice file it ran with (env.json ``tuned``: file, sha256, chosen): that
    file, read by --tuned as now, must still give each registered estimator the values the reference recorded,
    so that the reference's own command reproduces it. Rewriting results/tune-cpu/tuned.json per setting (as
    ``bench tune`` now writes) would leave quick-cpu's no-aux and 100-label cells on the preset's values."""
    from bench.run.tune import load_choices
    from ssvae.estimators import REGISTRY

    checked = 0
    for env_path in sorted((REPO / "results" / "reference").glob("*/env.json")):
        tuned = json.loads(env_path.read_text()).get("tuned") or {}
        if not tuned.get("file") or not (REPO / tuned["file"]).is_file():
            continue
        table, _ = load_choices(REPO / tuned["file"])
        for est, values in (tuned.get("chosen") or {}).items():
            if est in REGISTRY or "+" in est:  # an estimator renamed since is not looked up under its old name
                assert table.get(est) == values, (env_path.parent.name, tuned["file"], est)
                checked += 1
    assert checked > 10


def test_tune_keeps_a_choice_file_of_the_per_estimator_format(tmp_path, capsys):
    """``bench tune`` on the committed tuning grid rewrites its tables and tune.md but not the choice file the
    quick reference ran with (the test above says why)."""
    import shutil

    out = tmp_path / "tune-cpu"
    shutil.copytree(REPO / "results" / "tune-cpu", out)
    before = (out / "tuned.json").read_bytes()
    assert cli.main(["tune", str(out)]) == 0
    assert (out / "tuned.json").read_bytes() == before and "kept as it is" in capsys.readouterr().out
    (out / "tuned.json").unlink()  # a folder without one gets the per-setting file
    assert cli.main(["tune", str(out)]) == 0
    assert "enum+aux_L3000" in json.loads((out / "tuned.json").read_text())["settings"]
