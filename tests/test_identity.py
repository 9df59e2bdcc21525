"""Identity: resume by identity, one grid per folder, the report's own grid, strict tables, and the
module graph of the harness. No training: records are written by hand, as a worker would."""
import ast
import json
from pathlib import Path

import pytest

from bench.run import grid as gridmod
from bench.run import harness
from bench.core import schema
from bench.core.store import atomic_write_json, is_done, normalise, result_path, run_identity, stale_reason
from bench.core.tables import _write_csv, load_grid, write_tables

from .conftest import REPO

HASHES = {n: f"{i}" * 64 for i, n in enumerate(("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))}
VERSIONS = {"torch": "2.14.1", "pyro": "1.9.2"}
IDENT = run_identity(HASHES, VERSIONS)


def _grid(**over):
    preset = {**gridmod.load_preset("smoke"), "estimators": ["enum", "rb-topk"], "labels": [100], "seeds": 1,
              "baseline": False, "aux": [False]}
    return gridmod.make_grid({**preset, **over})


def _record(spec, commit="a" * 40, torch="2.14.1", hashes=HASHES, status="ok", threads=1):
    cfg = spec.get("config") or {}
    rec = {"id": spec["id"], "kind": spec["kind"], "spec": normalise(spec), "config": cfg, "status": status,
           "error": None, "threads": threads, "data_sha256": hashes["train-images-idx3-ubyte"],
           "identity": {"git": {"commit": commit, "dirty": False}, "data_sha256": hashes,
                        "distributions": {"torch": torch, "pyro-ppl": "1.9.2"}, "threads": threads}}
    if spec["kind"] == "train":
        rec.update(metrics={"test_acc_at_best_valid": 0.5, "eval_seconds": 1.0}, curves=[
            {"epoch": 1, "global_step": 10, "valid_acc": 0.5, "test_acc": 0.5, "loss_sup": 1.0, "loss_unsup": 2.0,
             "loss_aux": None, "elapsed_seconds": 1.0}], grad_variance=[])
    else:
        rec.update(grad_variance=[], timing=[])
    return rec


def _finish(out, tasks, **kw):
    for t in tasks:
        atomic_write_json(result_path(out, t), _record(t, **kw))


def _env(out, grid, tasks):
    atomic_write_json(out / "env.json", {"grid": grid.to_dict(), "tasks": [normalise(t) for t in tasks],
                                         "identity_key": IDENT,
                                         "expected_cells": [t["id"] for t in tasks if t["kind"] == "train"]})


def test_resume_by_identity(tmp_path):
    spec = next(t for t in gridmod.expand(_grid()) if t["kind"] == "train")
    _finish(tmp_path, [spec])
    assert is_done(tmp_path, spec, IDENT)
    _finish(tmp_path, [spec], commit="b" * 40)  # another commit alone is not stale
    assert is_done(tmp_path, spec, IDENT)
    _finish(tmp_path, [spec], torch="2.15.0")
    assert not is_done(tmp_path, spec, IDENT)
    assert stale_reason(_record(spec, torch="2.15.0"), spec, IDENT) == "torch 2.15.0, not 2.14.1"
    other = {**HASHES, "t10k-labels-idx1-ubyte": "f" * 64}
    assert stale_reason(_record(spec, hashes=other), spec, IDENT) == "other data (t10k-labels-idx1-ubyte)"
    changed = json.loads(json.dumps(spec))
    changed["config"]["lr"] = 0.001
    assert stale_reason(_record(spec), changed, IDENT) == "another configuration"


def test_probes_per_estimator_and_probe_settings_never_touch_cells():
    both, one = gridmod.expand(_grid()), gridmod.expand(_grid(estimators=["rb-topk"]))
    by_id = {t["id"]: t for t in both}
    for t in one:  # a subset's tasks are the same specs as the full grid's: nothing of enum is touched
        assert by_id[t["id"]] == t
    assert {t["id"] for t in both} - {t["id"] for t in one} >= {"timing_cpu_enum", "common_L100_s0_enum"}
    slower = gridmod.expand(_grid(probe={**gridmod.load_preset("smoke")["probe"], "timing_steps": 99, "timing_warmup": 9}))
    cells = lambda ts: [t for t in ts if t["kind"] == "train"]
    assert cells(slower) == cells(both)
    assert [t for t in slower if t["kind"] == "timing"] != [t for t in both if t["kind"] == "timing"]


def test_another_grid_is_refused_a_subset_is_not(tmp_path):
    grid = _grid()
    tasks = gridmod.expand(grid)
    _finish(tmp_path, tasks)
    _env(tmp_path, grid, tasks)
    sub = _grid(estimators=["enum"])
    assert harness.other_grid(tmp_path, sub, gridmod.expand(sub)) is None
    faster = _grid(estimators=["enum"], lr=0.001)
    assert harness.other_grid(tmp_path, faster, gridmod.expand(faster)) == "lr 0.00042, not 0.001"
    (tmp_path / "env.json").unlink()  # no env.json: the records alone say it
    assert "1 finished cell(s) of another configuration" in harness.other_grid(tmp_path, faster,
                                                                                gridmod.expand(faster))


def test_load_grid_reads_its_own_grid_and_lists_the_rest(tmp_path):
    grid_a = _grid()
    tasks_a = gridmod.expand(grid_a)
    _finish(tmp_path, tasks_a, commit="a" * 40)
    grid_b = _grid(estimators=["enum"], lr=0.001)
    tasks_b = gridmod.expand(grid_b)
    _finish(tmp_path, [t for t in tasks_b if t["kind"] == "train"], commit="b" * 40, threads=2)
    _env(tmp_path, grid_b, tasks_b)
    (tmp_path / "runs.csv").write_text("cell,status\nrb-topk_L100_s0,ok\n")  # a cache: never read
    g = load_grid(tmp_path)
    cells = {r["cell"]: r for r in g.tables["runs"]}
    assert set(cells) == {"enum_L100_s0"} and cells["enum_L100_s0"]["status"] == "ok"
    assert cells["enum_L100_s0"]["git_commit"] == "b" * 40
    outside = {o["id"]: o["why"] for o in g.outside}
    assert outside["rb-topk_L100_s0"] == "not a task of this grid"
    assert outside["timing_cpu_enum"] == "another configuration"  # grid b's probes never ran: a's are not b's
    assert g.provenance["cells"] == {"commits": {"b" * 40: 1}, "threads": {2: 1}, "records": 1}
    assert g.provenance["probes"]["records"] == 0
    write_tables(tmp_path, tasks_b, IDENT)  # the caches, rebuilt, agree
    assert (tmp_path / "runs.csv").read_text().count("\n") == 2


def test_a_run_of_a_part_of_the_folders_grid_keeps_the_rest_listed(tmp_path, monkeypatch):
    """Rerunning one estimator (or label count, or seed) in a folder never narrows it: env.json keeps the other
    tasks and the union of the grids, and the report reads every finished record; a grid with other cell
    settings (run with --force) still replaces it."""
    monkeypatch.setattr(harness, "folder_provenance", lambda grid, hashes, threads: {"grid": grid.to_dict()})
    whole = _grid(seeds=2)
    _finish(tmp_path, gridmod.expand(whole))
    part = _grid(estimators=["enum"], seeds=[1])
    prev = harness.environment(whole, gridmod.expand(whole), IDENT, HASHES, 1, 1, "local")
    env = harness.environment(part, gridmod.expand(part), IDENT, HASHES, 1, 1, "local", part_of=prev)
    assert env["grid"]["estimators"] == ["enum", "rb-topk"] and env["grid"]["seeds"] == [0, 1]
    assert sorted(env["expected_cells"]) == sorted(prev["expected_cells"])
    assert sorted(t["id"] for t in env["tasks"]) == sorted(t["id"] for t in prev["tasks"])
    atomic_write_json(tmp_path / "env.json", env)
    g = load_grid(tmp_path)
    assert not g.outside and {r["cell"] for r in g.tables["runs"]} == set(prev["expected_cells"])
    alone = harness.environment(part, gridmod.expand(part), IDENT, HASHES, 1, 1, "local")  # no folder to join
    assert alone["expected_cells"] == ["enum_L100_s1"] and alone["grid"]["estimators"] == ["enum"]


def test_csv_writer_refuses_unknown_or_missing_columns(tmp_path):
    _write_csv(tmp_path / "t.csv", ["a", "b"], [{"a": 1, "b": None}])
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,\n"
    with pytest.raises(ValueError, match="unknown column"):
        _write_csv(tmp_path / "t.csv", ["a", "b"], [{"a": 1, "b": 2, "c": 3}])
    with pytest.raises(ValueError, match="missing column"):
        _write_csv(tmp_path / "t.csv", ["a", "b"], [{"a": 1}])
    assert (tmp_path / "t.csv").read_text() == "a,b\n1,\n" and not list(tmp_path.glob(".*tmp"))


def test_cell_ids_round_trip():
    assert schema.cell_id("rb-topk", True, 100, 1) == "rb-topk+aux_L100_s1"
    assert schema.parse_cell_id("rb-topk+aux_L100_s1") == {"estimator": "rb-topk", "aux": True, "labels": 100,
                                                          "seed": 1}
    assert schema.parse_cell_id("timing_cpu_enum") is None


def _bench_targets(path: Path):
    """Every ``bench.*`` module one file imports (relative imports resolved), as dotted names."""
    rel = path.relative_to(REPO).with_suffix("").parts
    package = list(rel if rel[-1] == "__init__" else rel[:-1])
    if package and package[-1] == "__init__":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "bench":
                found |= {mod} if node.module else {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bench"}
    return found


#: the folders of bench/ and what each may import (besides ssvae and itself): the design, layer by layer
LAYERS = {
    "core": set(),                                   # the shared leaves: results' formats, store, provenance
    "analysis": {"core"},                            # the statistics the report draws on
    "run": {"core", "commands"},                     # running a grid
    "report": {"core", "analysis", "run", "commands"},   # the report, compare, the tuning study, README blocks
    "regress": {"core", "commands"},                 # the step-time regression gate
    "commands": set(),                               # the command table
    "cli": {"core", "commands"},                     # the root: reaches the rest through the command table
    "__main__": {"cli"},
}


def test_bench_folders_are_layers_without_circles():
    """Each folder of bench/ (and each root module) is one node; an import between two nodes follows
    :data:`LAYERS`, so the tree reads as the design and no import circle can form between folders."""
    root = REPO / "bench"
    nodes = {p.stem for p in root.glob("*.py") if p.stem != "__init__"} | \
        {d.name for d in root.iterdir() if (d / "__init__.py").is_file()}
    assert nodes == set(LAYERS), f"bench/ holds {sorted(nodes)}; LAYERS names {sorted(LAYERS)}"
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        node = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if node == "__init__":
            continue
        for target in _bench_targets(path):
            other = target.split(".")[1] if "." in target else None
            if other and other != node:
                assert other in LAYERS[node], f"bench/{rel} imports {target}: {node} may import {sorted(LAYERS[node])}"
    # cli reaches the command modules through bench.commands' table (imported when a command runs)
    from bench.commands import COMMANDS

    assert {c.module.split(".")[1] for c in COMMANDS.values()} == {"run", "report", "regress"}


def test_report_reads_only_its_own_grid(tmp_path):
    from bench import report
    from bench.report.frames import table1 as table1_long

    grid_a = _grid()
    _finish(tmp_path, gridmod.expand(grid_a), commit="a" * 40)
    grid_b = _grid(estimators=["enum"], lr=0.001)
    tasks_b = gridmod.expand(grid_b)
    _finish(tmp_path, [t for t in tasks_b if t["kind"] == "train"], commit="b" * 40)
    _env(tmp_path, grid_b, tasks_b)
    write_tables(tmp_path, gridmod.expand(grid_a), IDENT)  # stale caches of the other grid: never read
    res = report.load_results(tmp_path)
    assert set(res.runs["cell"]) == {"enum_L100_s0"} and set(res.runs["status"]) == {"ok"}
    assert set(table1_long(res)["estimator"]) == {"enum"}
    assert {o["id"] for o in res.outside} >= {"rb-topk_L100_s0", "timing_cpu_rb-topk"}
    assert any(p.startswith("outside this grid: rb-topk_L100_s0") for p in res.problems)
    assert res.part_provenance["cells"]["commits"] == {"b" * 40: 1}


def test_a_failed_record_of_this_spec_is_this_grids_failure(tmp_path):
    from bench.run.launch import write_failed

    grid = _grid(estimators=["enum"])
    tasks = gridmod.expand(grid)
    _env(tmp_path, grid, tasks)
    cell = next(t for t in tasks if t["kind"] == "train")
    write_failed(tmp_path, cell, "worker killed by signal 9")  # the executor's record: no identity
    g = load_grid(tmp_path)
    assert cell["id"] in g.records and not g.outside
    assert {r["cell"]: r["status"] for r in g.tables["runs"]}[cell["id"]] == "failed"
    assert not is_done(tmp_path, cell, IDENT)


def test_dirty_means_a_code_change_not_a_run_writing_its_results(tmp_path):
    import subprocess

    from bench.core.provenance import git_commit, identity

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "runs.csv").write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert git_commit(tmp_path)["dirty"] is False
    (tmp_path / "results" / "runs.csv").write_text("a\nb\n")  # a run writing into a committed results folder
    assert git_commit(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path)["dirty"] is True
    # a task keeps the commit it was loaded from, not the one the checkout moved to while it ran
    assert identity("cpu", 1, {}, git={"commit": "a" * 40, "dirty": False})["git"]["commit"] == "a" * 40


def test_no_function_local_import_of_a_project_module():
    """Every import of a bench or ssvae module is at the top of its file, where a reader sees what the module
    depends on (the command table loads a command's module by name, `bench.commands`, so `--help` stays free
    of torch; that is a lookup, not an import hidden in a function)."""
    found = []
    for path in sorted([*(REPO / "bench").rglob("*.py"), *(REPO / "ssvae").rglob("*.py")]):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    mods = [node.module or ""] if not node.level else ["."]
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    continue
                if any(m == "." or m.split(".")[0] in ("bench", "ssvae") for m in mods):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} in {fn.name}()")
    assert not found, "function-local imports of project modules:\n" + "\n".join(found)
