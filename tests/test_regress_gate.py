"""The regression gate: which stored baseline may fail a build, the A/B's base in a shallow CI clone,
where history goes (``--history-dir``) and its pytest-benchmark copy, bad baseline files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import regress
from bench.core.provenance import versions
from bench.regress import ab as abmod
from bench.regress import baseline, history, machine
from bench.regress import cli as regress_cli

REPO = Path(__file__).resolve().parents[1]


def fake_json(enum_factor=1.0):
    """pytest-benchmark JSON with one paired ratio: Pyro enum unsup step / reference step = 1.1 x enum_factor."""
    from pytest_benchmark.stats import Stats

    info = {"estimator": "enum", "step_kind": "unsup", "reference": "unsup-enum", "exact_counterpart": True}
    t = 0.11 * enum_factor

    def bench(name, s, extra):
        stats = Stats()
        for x in (s, s * 1.01, s * 0.99, s, s):
            stats.update(x)
        return {"group": None, "name": name, "fullname": f"tests/benchmarks/test_x.py::{name}", "params": None,
                "param": None, "extra_info": {**info, **extra}, "options": {}, "stats": {**stats.as_dict(),
                                                                                          "iterations": 1}}

    return {"machine_info": {}, "commit_info": {}, "datetime": "2026-12-03T00:00:00", "version": "5.3.1",
            "benchmarks": [bench("enum-unsup-pyro", t, {"impl": "pyro", "target_s": [t] * 5, "partner_s": [0.1] * 5}),
                           bench("enum-unsup-ref", 0.10, {"impl": "ref"})]}


def saved_baseline(tmp_path, **machine):
    """A baseline saved here (this machine, these versions), with ``machine`` fields then overridden."""
    path = tmp_path / "machine.json"
    regress.save([fake_json()], path, short=False, stat="q25", tolerance=0.2, tolerance_short=0.2)
    doc = json.loads(path.read_text())
    for key, value in machine.items():
        if value is None:
            doc["machine"].pop(key, None)
        else:
            doc["machine"][key] = value
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def fake_suite(monkeypatch):
    """``regress run`` without the real suite: an injected slowdown makes the enum step 30 % slower."""
    calls = []

    def run(short, inject=None, rounds=None):
        calls.append(inject)
        return fake_json(enum_factor=1.3 if inject else 1.0)

    monkeypatch.setattr(baseline, "run_benchmarks", run)
    monkeypatch.delenv("SSVAE_INJECT_SLOWDOWN", raising=False)
    return calls


# -- 1. a baseline judges only where the machine and the libraries match ----------------------------------
def test_only_a_matching_baseline_can_fail_a_build(tmp_path, fake_suite, capsys):
    good = saved_baseline(tmp_path)
    assert regress_cli.main(["run", "--short", "--inject-slowdown", "enum:0.3", "--baseline", str(good)]) == 1
    assert "REGRESSION: estimator enum, step kind unsup" in capsys.readouterr().err
    other = saved_baseline(tmp_path, torch="2.15.0+cu132")
    for extra in ([], ["--missing-ok"]):
        assert regress_cli.main(["run", "--short", "--inject-slowdown", "enum:0.3", "--baseline", str(other),
                                 *extra]) == 0
        out, err = capsys.readouterr()
        line = [ln for ln in out.splitlines() if ln.startswith("regress: NOT CHECKED against ")]
        assert len(line) == 1 and "REGRESSION" not in err
        assert f"saved with torch 2.15.0+cu132, this environment has {versions()['torch']}" in line[0]
    assert fake_suite == ["enum:0.3", "enum:0.3"]  # --missing-ok: not run at all against an unusable baseline


def test_baseline_check_names_why_it_does_not_judge(tmp_path, capsys):
    slow = fake_json(enum_factor=1.5)
    path = saved_baseline(tmp_path, fingerprint=None)
    assert regress.check(slow, path, None, short=True) == 0
    assert "saved before machine fingerprints (matched by CPU name only" in capsys.readouterr().out
    fp = dict(machine.fingerprint(), name="intel-xeon-2cpu-000000")
    path = saved_baseline(tmp_path, fingerprint=fp)
    assert regress.check(slow, path, None, short=True) == 0
    here = machine.fingerprint()["name"]
    assert f"fingerprint intel-xeon-2cpu-000000 differs from this machine's {here}" in capsys.readouterr().out
    path = saved_baseline(tmp_path, pyro="1.8.0")
    assert regress.check(slow, path, None, short=True) == 0
    assert f"saved with pyro 1.8.0, this environment has {versions()['pyro']}" in capsys.readouterr().out
    assert regress.check(slow, saved_baseline(tmp_path), None, short=True) == 1  # the same baseline, matching


def test_the_committed_pre_fingerprint_baseline_is_not_checked(monkeypatch, capsys):
    """The issue's case: amd-epyc-2cpu.json (torch 2.15.0+cu132, no fingerprint) fails no build."""
    monkeypatch.setattr(baseline, "run_benchmarks", lambda *a, **k: pytest.fail("ran the suite"))
    path = REPO / "results" / "baselines" / "amd-epyc-2cpu.json"
    assert regress_cli.main(["run", "--short", "--missing-ok", "--baseline", str(path), "--no-history"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("regress: NOT CHECKED against results/baselines/amd-epyc-2cpu.json: ")
    assert "saved before machine fingerprints" in out[0] and "saved with torch 2.15.0+cu132" in out[0]


# -- 5. unreadable baselines and results: one line, exit 2 -----------------------------------------------
@pytest.mark.parametrize("bad", ["truncated", "list", "folder", "no-metrics"])
def test_compare_with_a_bad_baseline_is_one_line(tmp_path, capsys, bad):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(fake_json()))
    path = tmp_path / "base.json"
    if bad == "truncated":
        path.write_text(saved_baseline(tmp_path).read_text()[:200])
    elif bad == "list":
        path.write_text("[]")
    elif bad == "folder":
        path.mkdir()
    else:
        path.write_text(json.dumps({"machine": {}}))
    capsys.readouterr()
    assert regress_cli.main(["compare", str(results), "--baseline", str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("bench: error: regress: baseline ") and str(path) in err, err
    assert out == ""


@pytest.mark.parametrize("content", ["[]", '{"benchmarks": 3}'])
def test_compare_of_bad_results_is_one_line(tmp_path, capsys, content):
    results = tmp_path / "results.json"
    results.write_text(content)
    good = saved_baseline(tmp_path)
    capsys.readouterr()
    assert regress_cli.main(["compare", str(results), "--baseline", str(good)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench: error: regress compare: "), err


# -- 2. the A/B's base in a shallow clone, in CI --------------------------------------------------------
def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.fixture
def clones(tmp_path):
    """A two-commit repository, its shallow clone, and a full clone of a one-commit repository."""
    src = tmp_path / "src"
    src.mkdir()
    _git("init", "-q", "-b", "main", cwd=src)
    for i in range(2):
        (src / "f.txt").write_text(str(i))
        _git("add", "f.txt", cwd=src)
        _git("commit", "-q", "-m", f"c{i}", cwd=src)
    _git("clone", "-q", "--depth", "1", f"file://{src}", str(tmp_path / "shallow"), cwd=tmp_path)
    one = tmp_path / "one"
    one.mkdir()
    _git("init", "-q", "-b", "main", cwd=one)
    (one / "f.txt").write_text("x")
    _git("add", "f.txt", cwd=one)
    _git("commit", "-q", "-m", "only", cwd=one)
    _git("clone", "-q", f"file://{one}", str(tmp_path / "full"), cwd=tmp_path)
    return {"shallow": tmp_path / "shallow", "full": tmp_path / "full"}


def _ab(monkeypatch, repo, ci):
    monkeypatch.setattr(abmod, "REPO", repo)
    monkeypatch.setattr(abmod, "measure", lambda *a, **k: pytest.fail("ran an A/B"))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return regress_cli.main(["ab", "--base", "HEAD~1", "--if-available", "--no-history"])


def test_a_shallow_clone_in_ci_is_an_error_not_a_silent_pass(monkeypatch, clones, capsys):
    for ci in ("true", "1", "yes"):
        assert _ab(monkeypatch, clones["shallow"], ci) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("bench: error: regress ab: "), err
        assert "shallow clone" in err and "fetch-depth: 0" in err and "git fetch --unshallow" in err
    for ci in (None, "", "false", "0"):  # outside CI: said, and exit 0
        assert _ab(monkeypatch, clones["shallow"], ci) == 0
        assert "regress ab: NOT CHECKED against HEAD~1: " in capsys.readouterr().out
    assert _ab(monkeypatch, clones["full"], "true") == 0  # a full clone whose HEAD has no parent
    out = capsys.readouterr().out
    assert "regress ab: NOT CHECKED against HEAD~1: " in out and "shallow" not in out


# -- 3 and 4. --history-dir, SSVAE_HISTORY_DIR, and the pytest-benchmark copy ---------------------------
def _raw(cases):
    rng = np.random.default_rng(0)
    vals = {c: list(100 * np.exp(rng.normal(0, 0.02, 4))) for c in cases}
    setup = {"cases": {c: {"status": "ok", "error": None, "peak_mb": 5.0} for c in cases},
             "versions": {"torch": "t", "pyro": "p", "python": "3"}}
    return {"setup": {"A": setup, "B": setup}, "values": {"A": vals, "B": vals},
            "round_failures": {"A": {}, "B": {}}}


def _records(root):
    return sorted(p for p in root.rglob("*.json") if not p.name.endswith(history.PYTEST_BENCHMARK_SUFFIX))


def test_history_dir_for_ab_run_and_history(monkeypatch, tmp_path, fake_suite, capsys):
    monkeypatch.setattr(abmod, "measure", lambda a, b, cases, *x, **k: _raw(cases))
    monkeypatch.delenv(history.HISTORY_ENV, raising=False)
    hist = tmp_path / "hist"
    assert regress_cli.main(["ab", "--pythonpath-b", str(tmp_path), "--cases", "enum:unsup,ref:unsup-enum",
                             "--rounds", "4", "--history-dir", str(hist)]) == 0
    good = saved_baseline(tmp_path)
    assert regress_cli.main(["run", "--short", "--baseline", str(good), "--history-dir", str(hist)]) == 0
    monkeypatch.setenv(history.HISTORY_ENV, str(tmp_path / "from-env"))
    assert regress_cli.main(["run", "--short", "--baseline", str(good)]) == 0
    name = history.machine()["name"]
    assert [p.parent for p in _records(hist)] == [hist / name] * 2
    assert len(_records(tmp_path / "from-env")) == 1
    capsys.readouterr()
    assert regress_cli.main(["history", "--history-dir", str(hist)]) == 0
    assert "enum:unsup" in capsys.readouterr().out and (hist / name / "history.png").exists()
    assert regress_cli.main(["history", "--history-dir", str(tmp_path / "empty")]) == 2


def test_history_is_also_pytest_benchmark_json(monkeypatch, tmp_path, fake_suite, capsys):
    monkeypatch.setattr(abmod, "measure", lambda a, b, cases, *x, **k: _raw(cases))
    hist = tmp_path / "hist"
    for _ in range(2):
        assert regress_cli.main(["ab", "--pythonpath-b", str(tmp_path), "--cases", "enum:unsup,ref:unsup-enum",
                                 "--rounds", "4", "--history-dir", str(hist)]) == 0
    assert regress_cli.main(["run", "--short", "--baseline", str(saved_baseline(tmp_path)),
                             "--history-dir", str(hist)]) == 0
    name = history.machine()["name"]
    copies = sorted((hist / name).glob("*" + history.PYTEST_BENCHMARK_SUFFIX))
    assert [p.name.replace(history.PYTEST_BENCHMARK_SUFFIX, ".json") for p in copies] == \
        [p.name for p in _records(hist)]
    doc = json.loads(copies[0].read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(doc)
    bench = doc["benchmarks"][0]
    assert {"name", "fullname", "group", "params", "stats"} <= set(bench)
    assert {"min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "rounds", "iterations", "ops"} <= \
        set(bench["stats"])
    assert len(history.load(name, root=hist)) == 3  # the copies are not records
    tool = Path(sys.executable).parent / "pytest-benchmark"
    # as docs/regressions.md shows it: every A/B of this machine, a row per record and case
    proc = subprocess.run([str(tool), "--storage", str(hist), "compare", f"{name}/*-ab.pytest-benchmark",
                           "--group-by", "name", "--name", "long", "--columns", "min,median,max,rounds"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Failed to load" not in proc.stderr, proc.stderr
    for p in copies:
        if p.name.endswith("-ab" + history.PYTEST_BENCHMARK_SUFFIX):
            stem = p.name.removesuffix(".json")
            assert f"bench.regress.ab::enum:unsup ({stem})" in proc.stdout, proc.stdout
            assert f"bench.regress.ab::ref:unsup-enum ({stem})" in proc.stdout, proc.stdout
    proc = subprocess.run([str(tool), "compare", *map(str, copies)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "enum-unsup-pyro" in proc.stdout and "Failed to load" not in proc.stderr, \
        proc.stdout + proc.stderr
