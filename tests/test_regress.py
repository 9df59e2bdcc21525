"""The regression check's logic: paired ratios, the comparison, its message, the injected slowdown."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import regress, slowdown

REPO = Path(__file__).resolve().parents[1]


def fake_json(enum_factor=1.0, trace_ratio=1.2, extra=()):
    """pytest-benchmark JSON with paired times: Pyro/ref 1.1 for enum, trace_ratio for trace."""
    def bench(name, info, t, p=None):
        stats = {"min": t, "q1": t, "median": t, "mean": t, "rounds": 5}
        info = dict(info)
        if p is not None:
            info.update({"target_s": [t] * 5, "partner_s": [p] * 5})
        return {"name": name, "extra_info": info, "stats": stats}

    out = [
        bench("enum-unsup-pyro", {"estimator": "enum", "step_kind": "unsup", "impl": "pyro",
                                  "reference": "unsup-enum", "exact_counterpart": True}, 0.11 * enum_factor, 0.10),
        bench("enum-unsup-ref", {"estimator": "enum", "step_kind": "unsup", "impl": "ref",
                                 "reference": "unsup-enum", "exact_counterpart": True}, 0.10),
        bench("trace-unsup-pyro", {"estimator": "trace", "step_kind": "unsup", "impl": "pyro",
                                   "reference": "unsup-sampled", "exact_counterpart": True}, 0.012 * trace_ratio, 0.012),
        bench("trace-unsup-ref", {"estimator": "trace", "step_kind": "unsup", "impl": "ref",
                                  "reference": "unsup-sampled", "exact_counterpart": True}, 0.012),
        bench("enum-over-trace", {"pair": "enum/trace", "estimator": "enum", "step_kind": "unsup"},
              0.11 * enum_factor, 0.0144),
        bench("gemm", {"gemm_shape": [2000, 794, 500], "flops": 2 * 2000 * 794 * 500}, 0.016),
    ]
    return {"benchmarks": out + list(extra)}


def baseline_of(bench_json, tmp_path, tolerance=0.2):
    path = tmp_path / "machine.json"
    regress.save([bench_json], path, short=False, stat="q25", tolerance=tolerance, tolerance_short=tolerance)
    return path


def test_paired_ratios():
    m = regress.ratios(fake_json())
    assert m["pyro/ref:enum:unsup"]["ratio"] == pytest.approx(1.1)
    assert m["pyro/ref:trace:unsup"]["ratio"] == pytest.approx(1.2)
    assert m["enum/trace:unsup"]["ratio"] == pytest.approx(0.11 / 0.0144)
    assert regress.paired_ratio({"target_s": [2, 3, 9], "partner_s": [1, 3, 3]})[0] == 2.0


def test_unchanged_tree_passes(tmp_path, capsys):
    path = baseline_of(fake_json(), tmp_path)
    doc = json.loads(path.read_text())
    assert {"cpu_model", "cpu_count", "torch", "pyro"} <= set(doc["machine"]) and doc["date"]
    assert regress.check(fake_json(), path, None, short=False) == 0
    assert "regress: OK" in capsys.readouterr().out


def test_slower_enum_step_fails_with_a_message_naming_it(tmp_path, capsys):
    path = baseline_of(fake_json(), tmp_path)
    assert regress.check(fake_json(enum_factor=1.3), path, None, short=False) == 1
    err = capsys.readouterr().err
    assert "REGRESSION: estimator enum, step kind unsup" in err
    assert "baseline ratio 1.100, new ratio 1.430" in err
    assert "enum/trace:unsup" in err  # the enum/trace ratio moved too
    assert "estimator trace" not in err  # trace's own ratios did not
    assert err.count("REGRESSION:") == 2


def test_within_tolerance_passes_and_faster_is_a_note(tmp_path, capsys):
    path = baseline_of(fake_json(), tmp_path)
    assert regress.check(fake_json(enum_factor=1.1), path, None, short=False) == 0
    assert regress.check(fake_json(trace_ratio=0.8), path, None, short=False) == 0
    assert "faster than its baseline" in capsys.readouterr().out


def test_missing_baseline_is_an_error(tmp_path, capsys):
    assert regress.check(fake_json(), tmp_path / "nope.json", None, short=False) == 2
    assert "make regress-save" in capsys.readouterr().err


def test_new_estimator_without_baseline_is_reported_not_failed(tmp_path, capsys):
    path = baseline_of(fake_json(), tmp_path)
    extra = [{"name": "new", "stats": {"min": 1, "q1": 1, "median": 1, "mean": 1, "rounds": 5},
              "extra_info": {"estimator": "gumbel", "step_kind": "unsup", "impl": "pyro",
                             "reference": "unsup-sampled", "exact_counterpart": False,
                             "target_s": [0.02] * 5, "partner_s": [0.01] * 5}}]
    assert regress.check(fake_json(extra=extra), path, None, short=False) == 0
    assert "pyro/yardstick:gumbel:unsup" in capsys.readouterr().out


def test_slowdown_spec_parsing():
    assert slowdown.parse("enum:0.3") == {("enum", "unsup"): 0.3}
    assert slowdown.parse("enum/sup:0.5, trace:1") == {("enum", "sup"): 0.5, ("trace", "unsup"): 1.0}
    assert slowdown.parse("") == {}
    with pytest.raises(ValueError):
        slowdown.parse("enum")


def test_slowdown_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv(slowdown.ENV, raising=False)
    assert slowdown.requested("enum", "unsup") == 0.0
    step = lambda: None  # noqa: E731
    assert slowdown.slowed(step, 0.0) is step
    monkeypatch.setenv(slowdown.ENV, "enum:0.3")
    assert slowdown.requested("enum", "unsup") == 0.3
    assert slowdown.requested("enum", "sup") == 0.0 and slowdown.requested("trace", "unsup") == 0.0


def test_slowdown_is_calibrated_to_the_fraction():
    """The matmul count is fraction x step time / matmul time (timing itself is shown by make regress)."""
    a = torch.randn(200, 200)
    calls = []
    step = lambda: calls.append([torch.mm(a, a) for _ in range(10)])  # noqa: E731
    slow = slowdown.slowed(step, 0.5)
    inj = slow.injected
    assert inj["matmuls"] == max(1, round(0.5 * inj["calibrated_step_s"] / inj["matmul_s"]))
    n = len(calls)
    slow()
    assert len(calls) == n + 1  # the step itself still runs, once


def test_injection_cannot_leak_into_training():
    """Only the benchmarks and the regress CLI know the variable; training code never reads it."""
    for path in (REPO / "ssvae").rglob("*.py"):
        assert slowdown.ENV not in path.read_text(), path
        assert "slowdown" not in path.read_text(), path
    for path in (REPO / "bench").rglob("*.py"):
        if path.name not in ("slowdown.py", "regress.py"):
            text = path.read_text()
            assert slowdown.ENV not in text and "slowdown import" not in text and "import slowdown" not in text, path


def test_regress_strips_an_inherited_injection(monkeypatch):
    """``bench.regress run`` without --inject-slowdown removes the variable from pytest's env."""
    seen = {}

    def fake_run(cmd, cwd, env):
        seen.update(env)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setenv(slowdown.ENV, "enum:0.3")
    monkeypatch.setattr(regress.subprocess, "run", fake_run)
    with pytest.raises(SystemExit):
        regress.run_benchmarks(short=True)
    assert slowdown.ENV not in seen and seen["REGRESS_SHORT"] == "1"
    with pytest.raises(SystemExit):
        regress.run_benchmarks(short=True, inject="enum:0.3")
    assert seen[slowdown.ENV] == "enum:0.3"


def test_save_refuses_an_injected_slowdown(monkeypatch, tmp_path):
    monkeypatch.delenv(slowdown.ENV, raising=False)
    assert regress.main(["save", "--inject-slowdown", "enum:0.3", "--baseline", str(tmp_path / "b.json")]) == 2
    assert not (tmp_path / "b.json").exists()


def test_machine_name_is_a_slug(monkeypatch):
    monkeypatch.delenv("REGRESS_MACHINE", raising=False)
    name = regress.machine_name()
    assert name.endswith(f"-{os.cpu_count()}cpu") and " " not in name and "/" not in name
    monkeypatch.setenv("REGRESS_MACHINE", "ci-runner")
    assert regress.baseline_path().name == "ci-runner.json"


def test_committed_baselines_are_complete():
    for path in (REPO / "results" / "baselines").glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["machine"]["cpu_model"] and doc["machine"]["torch"] and doc["machine"]["pyro"]
        assert doc["date"] and doc["metrics"] and 0 < doc["tolerance"] < 1
        assert "enum/trace:unsup" in doc["metrics"] and "pyro/ref:enum:unsup" in doc["metrics"]


def test_cli_compare_exits_nonzero_on_regression(tmp_path):
    path = baseline_of(fake_json(), tmp_path)
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(fake_json(enum_factor=1.5)))
    proc = subprocess.run([sys.executable, "-m", "bench.regress", "compare", str(slow), "--baseline", str(path)],
                          cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION: estimator enum, step kind unsup" in proc.stderr
