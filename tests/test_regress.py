"""The regression checks: the baseline's paired ratios, the A/B's statistics and runner, the history,
the machine fingerprint, peak memory, and the injected slowdown."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import regress
from bench.regress import slowdown
from bench.regress import ab as abmod
from bench.core import peakmem
from bench.regress import baseline, history, machine
from bench.regress import cli as regress_cli

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


def test_slowdown_adds_the_fraction_of_each_steps_own_time():
    """The extra work lasts fraction x the step's own time, measured per call (no calibration)."""
    a = torch.randn(200, 200)
    calls = []
    step = lambda: calls.append([torch.mm(a, a) for _ in range(10)])  # noqa: E731
    slow = slowdown.slowed(step, 0.5)
    assert slow.injected["fraction"] == 0.5
    for _ in range(3):
        slow()
        last = slow.last
        assert last["extra_s"] >= 0.5 * last["step_s"] and last["matmuls"] >= 1
    assert len(calls) == 3  # the step itself still runs, once per call


def test_injection_cannot_leak_into_training():
    """Only the benchmarks and the regress CLI know the variable; training code never reads it."""
    for path in (REPO / "ssvae").rglob("*.py"):
        assert slowdown.ENV not in path.read_text(), path
        assert "slowdown" not in path.read_text(), path
    for path in (REPO / "bench").rglob("*.py"):
        if path.name != "slowdown.py" and "regress" not in path.parts:
            text = path.read_text()
            assert slowdown.ENV not in text and "slowdown import" not in text and "import slowdown" not in text, path


def test_a_running_grid_never_imports_the_regression_package():
    """What `bench run` and `bench train` load (the harness, its worker, the task kinds, the timing probe, the
    train command) imports neither ``bench.regress`` nor ``bench.regress.slowdown``: peak memory is a shared leaf."""
    code = ("import sys\nimport bench.run.harness, bench.run.worker, bench.run.tasks, bench.run.timing_probe, bench.run.train_cmd\n"
            "print(sorted(m for m in sys.modules if m.startswith('bench.regress') or m == 'bench.regress.slowdown'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout



def test_a_grid_worker_loads_no_analysis_library():
    """Every task starts a worker process, so its imports are paid per task: the worker loads none of the
    report's libraries (scipy, pandas, seaborn, matplotlib, jinja2). scipy.stats once came in through the
    tuning study's statistics and made `make test` about 2 minutes slower."""
    code = ("import sys\nimport bench.run.worker, bench.run.harness\n"
            "print(sorted(m for m in ('scipy', 'pandas', 'seaborn', 'matplotlib', 'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout

def test_regress_strips_an_inherited_injection(monkeypatch):
    """``bench.regress run`` without --inject-slowdown removes the variable from pytest's env."""
    seen = {}

    def fake_run(cmd, cwd, env):
        seen.update(env)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setenv(slowdown.ENV, "enum:0.3")
    monkeypatch.setattr(baseline.subprocess, "run", fake_run)
    with pytest.raises(SystemExit):
        baseline.run_benchmarks(short=True)
    assert slowdown.ENV not in seen and seen["REGRESS_SHORT"] == "1"
    with pytest.raises(SystemExit):
        baseline.run_benchmarks(short=True, inject="enum:0.3")
    assert seen[slowdown.ENV] == "enum:0.3"


def test_save_refuses_an_injected_slowdown(monkeypatch, tmp_path):
    monkeypatch.delenv(slowdown.ENV, raising=False)
    assert regress_cli.main(["save", "--inject-slowdown", "enum:0.3", "--baseline", str(tmp_path / "b.json")]) == 2
    assert not (tmp_path / "b.json").exists()


def test_machine_name_is_a_slug_and_a_fingerprint(monkeypatch):
    from bench.core.provenance import usable_cpus

    monkeypatch.delenv("REGRESS_MACHINE", raising=False)
    name = regress.machine_name()
    slug, _, digest = name.rpartition("-")
    assert slug.endswith(f"-{usable_cpus()}cpu") and len(digest) == 6 and " " not in name and "/" not in name
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


# -- the A/B --------------------------------------------------------------------------------------

def _rounds(factor, noise, n=12, seed=0):
    rng = np.random.default_rng(seed)
    a = 100 * np.exp(rng.normal(0, noise, n))
    b = 100 * factor * np.exp(rng.normal(0, noise, n))
    return list(a), list(b)


def test_ab_flags_a_significant_slowdown_beyond_the_tolerance_only():
    a, b = _rounds(1.3, 0.03)
    row = abmod.compare_case(a, b, tolerance=0.15)
    assert row["verdict"] == "slower" and 1.2 < row["ratio"] < 1.4 and row["ci_low"] > 1
    assert row["a_ms"] == pytest.approx(np.median(a)) and row["b_ms"] == pytest.approx(np.median(b))
    assert abmod.compare_case(*_rounds(1.0, 0.03), tolerance=0.15)["verdict"] == "same"
    assert abmod.compare_case(*_rounds(1.08, 0.01), tolerance=0.15)["verdict"] == "same"  # significant, small
    noisy = abmod.compare_case(*_rounds(1.3, 0.6, n=4, seed=3), tolerance=0.15)
    assert noisy["ci_low"] < 1 and noisy["verdict"] == "same"  # beyond the tolerance, not significant
    assert abmod.compare_case(*_rounds(1 / 1.3, 0.03), tolerance=0.15)["verdict"] == "faster"


def _raw(a_status="ok", b_status="ok", b_error=None):
    def setup(status, error):
        return {"cases": {"enum:unsup": {"status": "ok", "error": None, "peak_mb": 50.0},
                          "trace-jit:sup": {"status": status, "error": error, "peak_mb": 10.0}},
                "versions": {"torch": "t", "pyro": "p", "python": "3"}}

    a, b = _rounds(1.0, 0.02)
    return {"setup": {"A": setup(a_status, None), "B": setup(b_status, b_error)},
            "values": {"A": {"enum:unsup": a, "trace-jit:sup": a if a_status == "ok" else []},
                       "B": {"enum:unsup": b, "trace-jit:sup": b if b_status == "ok" else []}},
            "round_failures": {"A": {}, "B": {}}}


def test_ab_a_case_failing_on_b_only_is_broken_and_named():
    rows = abmod.analyse(_raw(b_status="failed", b_error="RuntimeError: jit broke"), ["enum:unsup", "trace-jit:sup"],
                         0.15)
    assert rows["enum:unsup"]["verdict"] == "same" and rows["enum:unsup"]["a_peak_mb"] == 50.0
    assert rows["trace-jit:sup"]["verdict"] == "broken" and rows["trace-jit:sup"]["ratio"] is None
    side = abmod.Side("A", REPO)
    lines = abmod.verdict_lines(rows, side, side, 0.15)
    assert lines == ["BROKEN: trace-jit:sup runs on A but fails on B: RuntimeError: jit broke"]
    assert "jit broke" in abmod.table(rows, markdown=True)
    both = abmod.analyse(_raw(a_status="failed", b_status="failed", b_error="x"), ["trace-jit:sup"], 0.15)
    assert both["trace-jit:sup"]["verdict"] == "failed"  # failing on both sides: recorded, not a regression


def test_ab_runner_times_cases_and_records_failures_not_crashes(monkeypatch):
    """The runner in-process: a JIT loss that raises is the case's result (failed + message)."""
    import pyro.infer

    spec = __import__("importlib.util").util.spec_from_file_location("_t_runner", abmod.RUNNER)
    runner = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(runner)

    class Broken(pyro.infer.Trace_ELBO):
        def loss_and_grads(self, *a, **k):
            raise RuntimeError("tracer broke on this torch\nsecond line")

    monkeypatch.setattr(pyro.infer, "JitTrace_ELBO", Broken)
    monkeypatch.delenv(slowdown.ENV, raising=False)
    r = runner.Runner()
    out = r.setup(["baseline:sup", "trace-jit:sup", "nope:sup", "ref:baseline"], warmup=1, threads=1)
    cases = out["cases"]
    assert cases["baseline:sup"]["status"] == "ok" and cases["baseline:sup"]["peak_mb"] >= 0
    assert cases["trace-jit:sup"] == {"status": "failed",
                                      "error": "RuntimeError: tracer broke on this torch | second line"}
    assert cases["nope:sup"]["status"] == "missing"
    rnd = r.round(reps=2, min_ms=0)
    assert set(rnd["ms"]) == {"baseline:sup", "ref:baseline"} and all(len(v) == 2 for v in rnd["ms"].values())


def test_ab_without_the_base_revision_says_not_checked(capsys):
    assert regress_cli.main(["ab", "--base", "0" * 40, "--if-available", "--no-history"]) == 0
    assert "regress ab: NOT CHECKED against 0000000000" in capsys.readouterr().out
    assert regress_cli.main(["ab", "--base", "0" * 40, "--no-history"]) == 2
    assert "no commit" in capsys.readouterr().err


def test_missing_baseline_in_ci_mode_says_not_checked_without_running(monkeypatch, capsys):
    monkeypatch.setenv("REGRESS_MACHINE", "no-such-machine")
    monkeypatch.setattr(baseline, "run_benchmarks", lambda *a, **k: pytest.fail("ran the suite"))
    assert regress_cli.main(["run", "--short", "--missing-ok"]) == 0
    assert "NOT CHECKED against a stored baseline: none for this machine" in capsys.readouterr().out


# -- history, machine, memory ----------------------------------------------------------------------
def test_history_records_and_plot(tmp_path):
    for commit, ms in (("aaaaaaa", 100.0), ("bbbbbbb", 130.0)):
        history.append({"kind": "ab", "sides": "git", "commit": commit,
                        "points": [{"commit": commit, "cases": {"enum:unsup": {"ms": ms, "peak_mb": 50.0},
                                                                "ref:unsup-enum": {"ms": 90.0, "peak_mb": 60.0}}}]},
                       root=tmp_path)
    history.append({"kind": "ab", "sides": "env", "commit": "bbbbbbb", "a": {"describe": "pyro 1.9.1"},
                    "b": {"describe": "pyro 1.9.2"}, "ratios": {"enum:unsup": {"ratio": 1.01}}}, root=tmp_path)
    name = history.machine()["name"]
    recs = history.load(name, root=tmp_path)
    assert len(recs) == 3 and all(r["machine"] == name and r["fingerprint"]["caches"] is not None for r in recs)
    out = history.draw(name, root=tmp_path)
    table = out["table"].read_text()
    assert "| enum:unsup | 100.0 (50) | 130.0 (50) |" in table and "pyro 1.9.1 vs pyro 1.9.2" in table
    assert out["png"].stat().st_size > 10_000


def test_fingerprint_separates_masked_cpu_names(monkeypatch):
    from bench.core import provenance

    fields = {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143", "stepping": "8",
              "flags": "sse4_2 avx avx2 fma avx512f"}
    monkeypatch.setattr(provenance, "cpu_name", lambda: "Intel(R) Xeon(R) Processor")
    monkeypatch.setattr(provenance, "_cpuinfo_fields", lambda: dict(fields))
    one = provenance.machine_fingerprint.__wrapped__()
    fields["flags"] += " amx_tile"
    fields["model"] = "207"
    two = provenance.machine_fingerprint.__wrapped__()
    assert one["name"].startswith("intel-xeon-") and two["name"].startswith("intel-xeon-")
    assert one["name"] != two["name"] and "amx_tile" in two["kernel_flags"]


def test_unfit_names_the_machine_and_the_versions():
    from bench.core.provenance import versions

    doc = {"machine": {"cpu_model": "AMD EPYC", "cpu_count": 2, "torch": "0.0.1", "pyro": versions()["pyro"],
                       "python": versions()["python"]}}
    reasons = regress.unfit(doc)
    assert any("saved before machine fingerprints" in r for r in reasons)
    assert f"saved with torch 0.0.1, this environment has {versions()['torch']}" in reasons
    doc["machine"].update(torch=versions()["torch"], fingerprint=machine.fingerprint())
    assert regress.unfit(doc) == []
    # a baseline saved here fits here: `save` and `run` read the versions from the same place
    assert regress.unfit({"machine": regress.machine_info()}) == []
    # older baselines stored torch.__version__ with its local label (+cu130): not a different release
    doc["machine"]["torch"] = versions()["torch"] + "+cu130"
    assert regress.unfit(doc) == []
    # Python: the minor release is what moves interpreter overhead
    major, minor, *_ = versions()["python"].split(".")
    doc["machine"]["python"] = f"{major}.{minor}.99"
    assert regress.unfit(doc) == []
    doc["machine"]["python"] = f"{major}.{int(minor) + 1}.0"
    assert any(r.startswith(f"saved with python {major}.{int(minor) + 1}.0") for r in regress.unfit(doc))


def test_peak_memory_sees_a_known_allocation():
    def step():
        t = torch.ones(10 * 1024 * 1024)  # 40 MiB, touched
        return float(t.sum())

    mem = peakmem.peak_step_memory(step)
    assert 30 < mem["peak_mb"] < 60, mem
    assert peakmem.peak_step_memory(lambda: None)["peak_mb"] < 5


@pytest.mark.skipif(not os.environ.get("SSVAE_DATA_DIR"), reason="needs MNIST ($SSVAE_DATA_DIR)")
def test_timing_probe_has_a_peak_memory_column(tmp_path):
    import csv

    from bench.run import tasks
    from bench.core.schema import TIMING_COLUMNS
    from bench.core.tables import write_tables
    from ssvae.config import RunConfig

    cfg = RunConfig(estimator="enum", aux=True, labels=100, hidden=(64,), z_dim=8)
    spec = {"kind": "timing", "id": "timing_cpu", "estimators": ["trace", "enum"], "aux": [True],
            "device": "cpu", "config": cfg.to_dict(), "warmup": 1, "steps": 2}
    record = tasks.run_task(spec, tmp_path, data_dir=os.environ["SSVAE_DATA_DIR"])
    assert record["status"] == "ok", record.get("traceback")
    assert "peak_mb" in TIMING_COLUMNS
    for r in record["timing"]:
        assert isinstance(r["peak_mb"], float) and r["peak_mb"] >= 0 and r["peak_mb_method"]
    write_tables(tmp_path, [spec])
    with open(tmp_path / "timing.csv") as fh:
        assert all(row["peak_mb"] != "" for row in csv.DictReader(fh))
