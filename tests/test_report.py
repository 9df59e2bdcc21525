"""The report (bench/report.py) on fabricated results folders: content, robustness, determinism."""
import hashlib
import json
import re
import shutil

import pandas as pd
import pytest

from bench import report
from tests.report_fixtures import (CORRUPT_CELL, FAILED_CELL, MISSING_CELL, fabricate_results, variants)

VARIANTS = [report.variant_label(e, a) for e, a in variants()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    fabricate_results(root, corrupt=True)
    out = report.build_report(root)
    return root, out


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_writes_everything(built):
    root, out = built
    for name in ("report.md", "report.html", "tables/table1.csv", "tables/table1.md", "tables/timing.csv",
                 "tables/grad_variance.csv", "tables/status_summary.csv"):
        assert (root / name).is_file(), name
    for name in ("accuracy_vs_labels", "learning_curves", "grad_variance", "timing", "accuracy_vs_time", "samples"):
        assert (root / "plots" / f"{name}.png").stat().st_size > 1000, name


def test_table1_has_every_variant(built):
    root, _ = built
    assert VARIANTS == ["trace", "trace + aux", "enum", "enum + aux", "enum-seq", "enum-seq + aux", "baseline"]
    wide = pd.read_csv(root / "tables/table1.csv", dtype=str)
    assert list(wide.columns) == ["labels", *VARIANTS]
    assert list(wide["labels"]) == ["100", "3000"]
    long = pd.read_csv(root / "tables/table1_long.csv")
    assert set(long["variant"]) == set(VARIANTS)
    md = (root / "tables/table1.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| labels"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["labels", *VARIANTS]
    html = (root / "report.html").read_text()
    table = re.search(r'<table id="table1">(.*?)</table>', html, re.S).group(1)
    assert re.findall(r"<th>(.*?)</th>", table) == ["labels", *VARIANTS]
    for v in VARIANTS:
        assert f"| {v} |" in (root / "report.md").read_text() or f" {v} |" in (root / "report.md").read_text()


def test_intervals_and_pyro_reference(built):
    root, _ = built
    long = pd.read_csv(root / "tables/table1_long.csv")
    row = long[(long.labels == 100) & (long.variant == "enum + aux")].iloc[0]
    assert row.n_ok == 2 and row.ci95_halfwidth > 0
    assert row.pyro_mean == pytest.approx(0.9319)
    assert row.diff_vs_pyro == pytest.approx(row["mean"] - 0.9319, abs=1e-6)
    assert pd.isna(long[(long.labels == 100) & (long.variant == "enum-seq")].iloc[0].pyro_mean)
    pyro = pd.read_csv(root / "tables/table1_pyro.csv", dtype=str)
    assert list(pyro["labels"]) == ["100", "600", "1000", "3000"]
    assert pyro.iloc[0, 1] == "0.2007 ± 0.0353"
    md = (root / "tables/table1.md").read_text()
    assert "Pyro tutorial Table 1" in md and "0.9582 ± 0.0012" in md


def test_missing_failed_and_corrupt_counted(built):
    root, _ = built
    s = pd.read_csv(root / "tables/status_summary.csv").iloc[0]
    assert (s.expected, s.present, s.ok, s.failed, s.corrupt, s.missing) == (28, 27, 25, 1, 1, 1)
    bad = pd.read_csv(root / "tables/status_cells.csv").set_index("cell")["status"].to_dict()
    assert bad == {FAILED_CELL: "failed", CORRUPT_CELL: "corrupt", MISSING_CELL: "missing"}
    wide = pd.read_csv(root / "tables/table1.csv", dtype=str).set_index("labels")
    assert wide.loc["100", "enum-seq + aux"].endswith("(n=1) [1 failed]")
    assert wide.loc["3000", "trace + aux"].endswith("(n=1) [1 missing]")
    assert wide.loc["3000", "enum-seq"].endswith("(n=1) [1 corrupt]")
    text = (root / "report.md").read_text()
    assert "28 expected, 27 present, 1 absent" in text
    assert f"{CORRUPT_CELL}.json: unreadable JSON" in text


def test_provenance_everywhere(built):
    root, _ = built
    for md in (root / "tables").glob("*.md"):
        body = md.read_text()
        assert "preset fabricated" in body and "commit 0123456789" in body and "2025-01-02T03:04:05Z" in body
        assert "data sha256 dddddddddddd" in body and "torch 2.4.0" in body
    html = (root / "report.html").read_text()
    for section in html.split("<h2>")[1:]:  # every section with a table carries the provenance line
        if "<table" in section:
            assert 'class="prov"' in section.split("<table", 1)[1]


def test_tables_byte_identical_on_rerun(built, tmp_path):
    root, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    before = _digest(root / "tables")
    report.build_report(copy)
    assert _digest(copy / "tables") == before
    assert (copy / "report.md").read_bytes() == (root / "report.md").read_bytes()
    # PNGs are saved without a timestamp or version in their metadata, so the HTML is reproducible too
    assert (copy / "report.html").read_bytes() == (root / "report.html").read_bytes()
    report.build_report(copy, plots=False)
    assert _digest(copy / "tables") == before


def test_timing_and_relative_cost(built):
    root, _ = built
    rel = pd.read_csv(root / "tables/timing_relative.csv")
    enum = rel[rel.variant == "enum"].iloc[0]
    assert enum.relative_to_trace == pytest.approx(14.0 / 6.0, rel=1e-5)
    wide = pd.read_csv(root / "tables/timing.csv")
    assert {"sup ms", "unsup ms", "aux ms"} <= set(wide.columns)
    assert "2.33×" in (root / "report.md").read_text()


def test_grad_variance_ratio_to_enum(built):
    root, _ = built
    g = pd.read_csv(root / "tables/grad_variance.csv")
    assert (g[g.variant == "enum"].median_ratio_to_enum == 1).all()
    assert (g[g.variant == "trace"].median_ratio_to_enum > 10).all()
    assert set(g.param_group) == {"encoder_y", "encoder_z", "decoder"}


def test_compare_timing_folder(tmp_path):
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    fabricate_results(cpu)
    fabricate_results(gpu, device="cuda", device_name="NVIDIA H100 (fake)")
    report.build_report(cpu, compare_timing=[gpu], plots=False)
    rel = pd.read_csv(cpu / "tables/timing_relative.csv")
    assert set(rel.device) == {"cpu", "cuda"}
    assert "NVIDIA H100 (fake)" in (cpu / "report.md").read_text()


def test_single_seed_has_no_interval(tmp_path):
    fabricate_results(tmp_path, seeds=(0,))
    report.build_report(tmp_path, plots=False)
    wide = pd.read_csv(tmp_path / "tables/table1.csv", dtype=str).set_index("labels")
    assert wide.loc["100", "enum + aux"].endswith("(n=1)") and "±" not in wide.loc["100", "enum + aux"]


@pytest.mark.parametrize("damage", ["env", "runs_csv", "list_json", "bad_types", "empty_grad", "no_runs",
                                    "bad_samples"])
def test_damaged_folder_does_not_crash(tmp_path, damage):
    fabricate_results(tmp_path)
    if damage == "env":
        (tmp_path / "env.json").write_text("{not json")
    elif damage == "runs_csv":
        (tmp_path / "runs.csv").write_text("")
        (tmp_path / "curves.csv").write_text("garbage\n\x00\x01")
    elif damage == "list_json":
        (tmp_path / "runs" / "enum_L100_s0.json").write_text("[1, 2, 3]")
    elif damage == "bad_types":
        (tmp_path / "runs" / "enum_L100_s0.json").write_text(json.dumps(
            {"cell": "enum_L100_s0", "config": "oops", "status": "ok", "metrics": {"test_acc_at_best_valid": "x"},
             "curves": "nope"}))
    elif damage == "empty_grad":
        (tmp_path / "grad_variance.csv").write_text("estimator,aux\n")
        (tmp_path / "timing.csv").unlink()
    elif damage == "no_runs":
        shutil.rmtree(tmp_path / "runs")
        (tmp_path / "runs.csv").unlink()
        (tmp_path / "curves.csv").unlink()
    elif damage == "bad_samples":
        for p in (tmp_path / "samples").glob("*.npy"):
            p.write_bytes(b"not an npy file")
    out = report.build_report(tmp_path)
    html = out["report.html"].read_text()
    assert "<table" in html and html.rstrip().endswith("</html>")
    assert (tmp_path / "tables" / "table1.csv").exists()


def test_cli_entry(tmp_path, capsys):
    fabricate_results(tmp_path)
    assert report.main([str(tmp_path), "--no-plots"]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_add_report_parser_wires_func():
    import argparse
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    report.add_report_parser(sub)
    args = parser.parse_args(["report", "R", "--compare-timing", "G", "--compare-timing", "H"])
    assert args.func is report.cmd_report and args.compare_timing == ["G", "H"] and args.results_dir == "R"


def test_harness_csv_statuses(tmp_path):
    """runs.csv rows as the harness writes them: 'stale', 'corrupt: <reason>', 'missing', baseline by flag."""
    env = fabricate_results(tmp_path)
    runs = pd.read_csv(tmp_path / "runs.csv")
    runs.loc[runs.cell == "enum_L100_s0", "status"] = "stale"
    runs.loc[runs.cell == "trace_L100_s0", "status"] = "corrupt: JSONDecodeError"
    (tmp_path / "runs" / "trace_L100_s0.json").unlink()
    runs.to_csv(tmp_path / "runs.csv", index=False)
    env["grid"]["estimators"] = ["trace", "enum", "enum-seq"]
    env["grid"]["baseline"] = True
    del env["expected_cells"]  # fall back on the grid, baseline included
    (tmp_path / "env.json").write_text(json.dumps(env))
    report.build_report(tmp_path, plots=False)
    bad = pd.read_csv(tmp_path / "tables/status_cells.csv").set_index("cell")["status"].to_dict()
    assert bad["enum_L100_s0"] == "stale" and bad["trace_L100_s0"] == "corrupt"
    s = pd.read_csv(tmp_path / "tables/status_summary.csv").iloc[0]
    assert s.expected == 28 and s.stale == 1
    wide = pd.read_csv(tmp_path / "tables/table1.csv", dtype=str).set_index("labels")
    assert wide.loc["100", "enum"].endswith("[1 stale]") and "baseline" in wide.columns


def _real_results():
    import os
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for cand in (os.environ.get("SSVAE_REPORT_RESULTS"), root / "results" / "reference" / "quick-cpu",
                 root / "results" / "smoke-cpu"):
        if cand and (Path(cand) / "env.json").is_file():
            return Path(cand)
    return None


@pytest.mark.skipif(_real_results() is None, reason="no real results folder (results/reference/quick-cpu, "
                                                    "results/smoke-cpu or $SSVAE_REPORT_RESULTS)")
def test_report_on_real_results_reproduces_its_tables(tmp_path):
    """The committed reference: its report rebuilt from its result files alone gives the same tables
    and report.md, byte for byte (the report is a pure function of the folder)."""
    src = _real_results()
    dst = tmp_path / "real"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tables", "plots", "report.*", ".lock"))
    out = report.build_report(dst)
    wide = pd.read_csv(dst / "tables/table1.csv", dtype=str)
    env = json.loads((dst / "env.json").read_text())
    for est in env["grid"]["estimators"]:
        assert est in wide.columns
    assert out["report.html"].stat().st_size > 10_000
    if (src / "tables").is_dir():
        committed = sorted(p.name for p in (src / "tables").iterdir())
        assert committed == sorted(p.name for p in (dst / "tables").iterdir())
        for name in committed:
            assert (dst / "tables" / name).read_bytes() == (src / "tables" / name).read_bytes(), name
        assert (dst / "report.md").read_text() == (src / "report.md").read_text()


# -- Pyro's overhead, rankings, published anchors, headline verdict ----------------------------

def test_overhead_section(built):
    root, _ = built
    ov = pd.read_csv(root / "tables/pyro_overhead.csv")
    enum = ov[(ov.estimator == "enum") & (ov.step_kind == "unsup")].iloc[0]
    assert not enum.aux and enum.ref_step == "unsup-enum"
    assert enum.pyro_overhead == pytest.approx(1.15)
    assert enum.ref_median_ms == pytest.approx(14.0 / 1.15, rel=1e-5)
    assert enum.gflop == pytest.approx(9.17) and enum.pct_of_matmul_peak == pytest.approx(100 * 9.17 * 1.15 / 14, abs=0.01)
    assert set(ov[ov.step_kind == "aux"].aux) == {True}  # the aux step comes from the runs with aux
    assert list(ov.estimator.drop_duplicates()) == ["trace", "enum", "enum-seq", "baseline"]
    text = (root / "report.md").read_text()
    section = text.split("## Pyro's overhead", 1)[1].split("\n## ", 1)[0]
    assert "**1.15×**" in section and "14 ms in Pyro against 12.2 ms by hand" in section
    assert "75% of the measured matmul rate (1000.0 GFLOP/s)" in section
    assert "| enum | unsup | 14 | unsup-enum | 12.2 | 1.15× | 9.17 | 75% |" in section


def test_overhead_section_on_an_older_folder(tmp_path):
    fabricate_results(tmp_path, overhead=False)
    report.build_report(tmp_path, plots=False)
    text = (tmp_path / "report.md").read_text()
    section = text.split("## Pyro's overhead", 1)[1].split("\n## ", 1)[0]
    assert "timing.csv has no reference-step columns" in section and "<table" not in section
    assert len(pd.read_csv(tmp_path / "tables/pyro_overhead.csv")) == 0
    assert "## Time per step" in text  # the rest of the timing section is untouched


def test_rank_label_counts_fall_back_to_largest_and_smallest():
    assert report.rank_label_counts([100, 600, 3000]) == [(3000, "3000 labels"), (100, "100 labels")]
    (big, big_note), (small, small_note) = report.rank_label_counts([1000, 600, 1000])
    assert (big, small) == (1000, 600)
    assert "largest" in big_note and "3000 absent" in big_note and "smallest" in small_note
    assert report.rank_label_counts([3000]) == [(3000, "3000 labels")]
    assert report.rank_label_counts([]) == []


def test_rankings(built):
    root, _ = built
    acc = pd.read_csv(root / "tables/rank_accuracy.csv")
    assert list(acc.labels.drop_duplicates()) == [3000, 100]
    for labels, sub in acc.groupby("labels"):
        ranked = sub.dropna(subset=["rank"])
        assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
        assert list(ranked.mean_test_acc) == sorted(ranked.mean_test_acc, reverse=True)
        assert set(ranked.variant.iloc[:2]) == {"enum + aux", "enum-seq + aux"}
        assert ranked.variant.iloc[-1] == "trace"
        assert ranked[ranked.variant == "enum + aux"].diff_vs_enum_aux.iloc[0] == 0
    var = pd.read_csv(root / "tables/rank_grad_variance.csv")
    for labels, sub in var.groupby("labels"):
        assert list(sub.variant)[-1] == "trace" and set(sub.variant) == {"trace", "enum", "enum-seq"}
        assert (sub.checkpoints == "checkpoints > 0").all() and (sub.n_checkpoints == 4).all()
        assert sub[sub.variant == "enum"].median_ratio_to_enum.iloc[0] == 1
        assert sub[sub.variant == "trace"].median_ratio_to_enum.iloc[0] > 10
    tm = pd.read_csv(root / "tables/rank_time.csv")
    at = tm[tm.labels == 3000]
    assert list(at.variant)[0] == "baseline" and set(list(at.variant)[-2:]) == {"enum-seq", "enum-seq + aux"}
    assert list(at.median_seconds_per_epoch) == sorted(at.median_seconds_per_epoch)
    assert at[at.variant == "enum + aux"].ratio_to_enum_aux.iloc[0] == 1
    assert at[at.variant == "trace + aux"].ratio_to_enum_aux.iloc[0] == pytest.approx(6 / 14, rel=0.08)
    text = (root / "report.md").read_text()
    assert "## Estimators ranked" in text and "**By test accuracy: 3000 labels**" in text
    assert "**By seconds per epoch: 100 labels**" in text
    for name in ("rank_accuracy", "rank_grad_variance", "rank_time", "headline", "published_anchors"):
        assert (root / "tables" / f"{name}.md").is_file(), name


def test_verdict_none_qualifies(built):
    root, _ = built
    head = pd.read_csv(root / "tables/headline.csv", keep_default_na=False).iloc[0]
    assert head.labels == 3000 and head.winners == ""
    verdict = head.verdict
    assert verdict.startswith("**Verdict (at 3000 labels, with the auxiliary loss):** No estimator reaches within 1 point")
    assert "the most accurate within the time: trace + aux" in verdict
    assert "the fastest within the accuracy: enum-seq + aux" in verdict
    cands = pd.read_csv(root / "tables/headline_candidates.csv")
    assert set(cands.variant) == {"trace + aux", "enum-seq + aux"} and not cands.qualifies.any()
    text = (root / "report.md").read_text()
    assert text.index("## Headline") < text.index("## Table 1") and verdict in text


def test_verdict_names_the_winner(tmp_path):
    fabricate_results(tmp_path, acc={("trace", True): 0.99})  # as accurate as enum + aux, at ~43% of its time
    report.build_report(tmp_path, plots=False)
    head = pd.read_csv(tmp_path / "tables/headline.csv", keep_default_na=False).iloc[0]
    assert head.winners == "trace"
    assert "1 estimator reaches within 1 point" in head.verdict and "**trace + aux: " in head.verdict
    assert "% of the time" in head.verdict and "No estimator" not in head.verdict
    cands = pd.read_csv(tmp_path / "tables/headline_candidates.csv").set_index("variant")
    assert cands.loc["trace + aux", "qualifies"] and not cands.loc["enum-seq + aux", "qualifies"]
    assert cands.loc["trace + aux", "time_ratio_vs_enum_aux"] <= 0.6


def test_verdict_without_enum_aux(tmp_path):
    fabricate_results(tmp_path)
    for p in (tmp_path / "runs").glob("enum+aux_*.json"):
        p.unlink()
    runs = pd.read_csv(tmp_path / "runs.csv")
    runs[~runs.cell.str.startswith("enum+aux_")].to_csv(tmp_path / "runs.csv", index=False)
    report.build_report(tmp_path, plots=False)
    head = pd.read_csv(tmp_path / "tables/headline.csv", keep_default_na=False).iloc[0]
    assert "none can be given: enum + aux has no finished cell" in head.verdict


def test_published_anchors_load_and_match(built):
    anchors = report.load_anchors()
    assert {"source", "setting", "estimator", "value", "unit", "our_estimator"} <= set(anchors.columns)
    liu = anchors[anchors.source == "Liu et al. 2019"].set_index(["our_estimator", "unit"])
    assert liu.loc[("enum", "test_acc"), "value"] == 0.966 and liu.loc[("rb-topk", "seconds_per_epoch"), "value"] == 17.5
    jang = anchors[anchors.source == "Jang et al. 2017"].set_index(["our_estimator", "unit"])
    assert jang.loc[("gumbel-st", "test_acc"), "value"] == 0.936
    assert jang.loc[("gumbel", "speedup_vs_marginalisation"), "value"] == 2.0
    from ssvae.estimators import REGISTRY
    assert set(anchors.our_estimator) <= set(REGISTRY)
    import tomllib
    from pathlib import Path
    pyproject = tomllib.loads((Path(report.__file__).parents[1] / "pyproject.toml").read_text())
    assert "published_anchors.csv" in pyproject["tool"]["setuptools"]["package-data"]["bench"]

    root, _ = built
    an = pd.read_csv(root / "tables/published_anchors.csv")
    t1 = pd.read_csv(root / "tables/table1_long.csv")
    enum_aux_3000 = t1[(t1.labels == 3000) & (t1.variant == "enum + aux")]["mean"].iloc[0]
    liu_enum = an[(an.source == "Liu et al. 2019") & (an.our_estimator == "enum") & (an.unit == "test_acc")].iloc[0]
    assert liu_enum.our_variant == "enum + aux" and liu_enum.our_labels == 3000
    assert liu_enum.our_value == pytest.approx(enum_aux_3000)
    jang_enum = an[(an.source == "Jang et al. 2017") & (an.our_estimator == "enum")].iloc[0]
    assert jang_enum.our_labels == 100
    assert an[an.our_estimator == "gumbel"].our_value.isna().all()  # no gumbel in this grid
    rb = an[(an.our_estimator == "rb-topk") & (an.unit == "seconds_per_epoch")].iloc[0]
    assert rb.vs_marginalisation == pytest.approx(17.5 / 31.4, abs=1e-4)
    text = (root / "report.md").read_text()
    assert "## Published anchors" in text and "Liu et al. 2019" in text and "Jang et al. 2017" in text
