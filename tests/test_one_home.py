"""One home per fact: Pyro's run defaults are written once (ssvae.config.RunConfig, read as DEFAULT_RUN)."""
import re

from ssvae.config import DEFAULT_RUN, RunConfig

from .conftest import REPO

SOURCES = sorted(p for d in ("bench", "ssvae") for p in (REPO / d).rglob("*.py"))


def test_pyros_learning_rate_and_aux_multiplier_are_written_once():
    assert (DEFAULT_RUN.lr, DEFAULT_RUN.aux_multiplier) == (0.00042, 46.0) == (RunConfig().lr, RunConfig().aux_multiplier)
    for literal in (r"0\.00042\b", r"\b46\.0\b"):
        hits = {str(p.relative_to(REPO)): len(re.findall(literal, p.read_text())) for p in SOURCES}
        hits = {k: v for k, v in hits.items() if v}
        assert hits == {"ssvae/config.py": 1}, (literal, hits)


def test_a_results_folders_file_names_are_written_once():
    """env.json, runs/, probes/, cache/, logs/ and the folder's tables are named by bench.core.schema.Folder only:
    every other module reaches them through it."""
    from pathlib import Path

    from bench.core.schema import Folder

    f = Folder(Path("out"))
    assert (f.env, f.runs, f.probes, f.cache, f.logs, f.table("runs")) == (
        Path("out/env.json"), Path("out/runs"), Path("out/probes"), Path("out/cache"), Path("out/logs"),
        Path("out/runs.csv"))
    assert f.records("train") == f.runs and f.records("timing") == f.records("common") == f.probes
    # a path built from a literal folder or file name: / "runs", / "env.json", "runs/*.json", / "curves.csv"
    literal = r'/ "(env\.json|runs|probes|cache|logs|(runs|curves|timing|grad_variance)\.csv)"|"(runs|probes)/\*|"cache" in'
    hits = {str(p.relative_to(REPO)): len(re.findall(literal, p.read_text())) for p in SOURCES}
    hits = {k: v for k, v in hits.items() if v}
    assert hits == {}, hits  # schema.py names them as class constants
    names = {str(p.relative_to(REPO)): len(re.findall(r'"env\.json"', p.read_text())) for p in SOURCES}
    assert {k: v for k, v in names.items() if v} == {"bench/core/schema.py": 1}


def test_no_module_is_over_450_lines():
    """Files cut along their seams: a module that grows past 450 lines has two jobs (executors.py did, until the
    dask executor became a module of its own)."""
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in SOURCES}
    assert {k: v for k, v in lengths.items() if v > 450} == {}
