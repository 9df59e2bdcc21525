"""The report (bench/report/) on fabricated results folders: content, robustness, determinism, layout."""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench import report
from bench.core.errors import UsageError
from tests.report_fixtures import (CORRUPT_CELL, FAILED_CELL, MISSING_CELL, fabricate_results, summary_bullets, variants)

VARIANTS = [report.variant_label(e, a) for e, a in variants()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    fabricate_results(root, corrupt=True)
    out = report.build_report(root)
    return root, out


def _md_table(text, first_header):
    """The markdown table whose header row starts with ``| first_header``: {row key: {column: cell}}."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    cols = [c.strip() for c in lines[i].strip("|").split(" | ")]
    out = {}
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        out[cells[0]] = dict(zip(cols, cells))
    return out


def _table1(root):
    return _md_table((root / "tables/table1.md").read_text(), "variant")


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_writes_everything(built):
    root, out = built
    for name in ("report.md", "report.html", "tables/table1.csv", "tables/table1.md", "tables/timing.csv",
                 "tables/grad_variance.csv", "tables/status_summary.csv"):
        assert (root / name).is_file(), name
    for name in ("tables/summary.md", "tables/run_cost.md", "tables/grad_error_vs_enum.csv"):
        assert (root / name).is_file(), name
    for name in ("accuracy_vs_labels", "learning_curves", "grad_variance", "timing", "accuracy_vs_time", "samples",
                 "grad_error_vs_enum"):
        assert (root / "plots" / f"{name}.png").stat().st_size > 1000, name


def test_table1_has_every_variant(built):
    """Variants as rows, label counts as columns with n in the header, Pyro's value and the difference beside."""
    root, _ = built
    assert VARIANTS == ["trace", "trace + aux", "enum", "enum + aux", "enum-seq", "enum-seq + aux", "baseline"]
    num = pd.read_csv(root / "tables/table1.csv")
    assert list(num["variant"]) == VARIANTS
    assert {"mean_L100", "ci95_L100", "n_L100", "pyro_L100", "diff_L100", "mean_L3000"} <= set(num.columns)
    assert num["mean_L3000"].dtype.kind == "f"  # numbers, not formatted strings
    long = pd.read_csv(root / "tables/table1_long.csv")
    assert set(long["variant"]) == set(VARIANTS)
    header = ["variant", "100 labels (n=2)", "Pyro 100", "ours − Pyro 100", "3000 labels (n=2)", "Pyro 3000",
              "ours − Pyro 3000"]
    t1 = _table1(root)
    assert list(t1) == VARIANTS and list(t1["enum"]) == header
    html = (root / "report.html").read_text()
    table = re.search(r'<table class="sortable" id="table-table1">(.*?)</table>', html, re.S).group(1)
    assert re.findall(r"<th>(.*?)</th>", table) == header
    assert [re.sub("<.*?>", "", r) for r in re.findall(r"<tr><td>(.*?)</td>", table)] == VARIANTS


def test_table1_best_per_column_marked(built):
    root, _ = built
    long = pd.read_csv(root / "tables/table1_long.csv")
    t1 = _table1(root)
    for labels in (100, 3000):
        col = next(c for c in t1["enum"] if c.startswith(f"{labels} labels"))
        bold = [v for v, row in t1.items() if row[col].startswith("**")]
        best = long[long.labels == labels].sort_values("mean").variant.iloc[-1]
        assert bold == [best], (labels, bold)
    html = (root / "report.html").read_text()
    assert "<strong>0.9" in re.search(r'id="table-table1">(.*?)</table>', html, re.S).group(1)


def test_intervals_and_pyro_reference(built):
    root, _ = built
    long = pd.read_csv(root / "tables/table1_long.csv")
    row = long[(long.labels == 100) & (long.variant == "enum + aux")].iloc[0]
    assert row.n_ok == 2 and row.ci95_halfwidth > 0
    assert row.pyro_mean == pytest.approx(0.9319)
    assert row.diff_vs_pyro == pytest.approx(row["mean"] - 0.9319, abs=1e-6)
    assert pd.isna(long[(long.labels == 100) & (long.variant == "enum-seq")].iloc[0].pyro_mean)
    t1 = _table1(root)
    assert t1["enum + aux"]["Pyro 100"] == "0.932"
    assert t1["enum + aux"]["ours − Pyro 100"] == f"{row['mean'] - 0.9319:+.3f}"
    assert t1["enum-seq"]["Pyro 100"] == "–"
    pyro = pd.read_csv(root / "tables/table1_pyro.csv", dtype=str).set_index("variant")
    assert list(pyro.columns) == ["100 labels", "600 labels", "1000 labels", "3000 labels"]
    assert pyro.loc["trace (first variant)", "100 labels"] == "0.201 ± 0.035"
    md = (root / "tables/table1.md").read_text()
    assert "Pyro tutorial Table 1" in md and "0.958 ± 0.001" in md


def test_pyro_attribution(built):
    """Pyro's Table 1 is attributed as the tutorial states it, and our loop is not called Pyro's."""
    root, _ = built
    text = (root / "report.md").read_text()
    assert '"five random selections of supervised data"' in text
    assert "November 2017" in text and "multiplier of 300 and 100 epochs" in text and "April 2018" in text
    assert "5 seeds, 50 epochs" not in text and "Pyro's schedule" not in text


def test_missing_failed_and_corrupt_counted(built):
    root, _ = built
    s = pd.read_csv(root / "tables/status_summary.csv").iloc[0]
    assert (s.expected, s.present, s.ok, s.failed, s.corrupt, s.missing) == (28, 27, 25, 1, 1, 1)
    bad = pd.read_csv(root / "tables/status_cells.csv").set_index("cell")["status"].to_dict()
    assert bad == {FAILED_CELL: "failed", CORRUPT_CELL: "corrupt", MISSING_CELL: "missing"}
    t1 = _table1(root)
    assert t1["enum-seq + aux"]["100 labels (n=2)"].endswith("(n=1) [1 failed]")
    assert t1["trace + aux"]["3000 labels (n=2)"].endswith("(n=1) [1 missing]")
    assert t1["enum-seq"]["3000 labels (n=2)"].endswith("(n=1) [1 corrupt]")
    num = pd.read_csv(root / "tables/table1.csv").set_index("variant")
    assert num.loc["enum-seq + aux", "n_L100"] == 1 and num.loc["enum + aux", "n_L100"] == 2
    text = (root / "report.md").read_text()
    assert "28 expected, 27 present, 1 absent" in text
    assert f"{CORRUPT_CELL}.json: corrupt: JSONDecodeError" in text  # the one typed reader's words (bench.core.store)


def test_provenance_once_per_page(built):
    root, _ = built
    for md in (root / "tables").glob("*.md"):
        body = md.read_text()
        if md.name in ("summary.md", "run_cost.md"):  # quoted by the README, which states the provenance
            continue
        assert body.count("preset fabricated") == 1 and "commit 0123456789" in body, md.name
        assert "2025-01-02T03:04:05Z" in body and "data sha256 dddddddddddd" in body and "torch 2.4.0" in body
    prov = report.provenance(json.loads((root / "env.json").read_text()))
    assert (root / "report.md").read_text().count(prov) == 1
    html = (root / "report.html").read_text()
    assert html.count('class="prov"') == 1 and html.count(prov) == 1


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
    enum = rel[rel.estimator == "enum"].iloc[0]
    assert enum.relative_to_trace == pytest.approx(14.0 / 6.0, rel=1e-5)
    wide = pd.read_csv(root / "tables/timing.csv")
    assert {"sup ms", "unsup ms", "aux ms", "unsup × trace"} <= set(wide.columns)
    assert "2.33×" in (root / "report.md").read_text()


def test_a_contended_timing_probe_is_labelled(tmp_path):
    """enum-seq's timing probe shared the machine with 1.1 busy cores: labelled, and out of the verdicts."""
    root = tmp_path
    fabricate_results(root, contended={"enum-seq": 1.1})
    out = report.build_report(root)
    cands = pd.read_csv(root / "tables" / "headline_candidates.csv").set_index("variant")
    assert pd.isna(cands.loc["enum-seq + aux", "time_fraction"]) and "no isolated timing" in cands.loc[
        "enum-seq + aux", "notes"]
    shown = pd.read_csv(root / "tables" / "timing.csv").set_index("estimator")
    assert shown.loc["enum-seq", "measured"] == "contended (1.1 cores busy beside)"
    from bench.core.schema import cores
    assert (cores(1.0), cores(1.04), cores(0.25), cores(2)) == ("1 core", "1 core", "0.25 cores", "2 cores")
    assert (shown.drop(index="enum-seq")["measured"] == "alone").all()
    assert "beside the probe of enum-seq: those times are labelled so and no verdict uses them" in out["report.md"].read_text()


def test_timing_rows_not_duplicated(built):
    """timing.csv repeats the sup/unsup measurement for aux and no-aux: the report shows it once."""
    root, _ = built
    raw = pd.read_csv(root / "timing.csv")
    assert raw.duplicated(["estimator", "step_kind"]).any()  # the input does repeat them
    long = pd.read_csv(root / "tables/timing_long.csv")
    assert not long.duplicated(["device", "device_name", "estimator", "step_kind"]).any()
    assert set(long[long.step_kind == "aux"].from_aux_run) == {True}
    assert set(long[long.step_kind != "aux"].from_aux_run) == {False}
    wide = pd.read_csv(root / "tables/timing.csv")
    assert list(wide.estimator) == ["trace", "enum", "enum-seq", "baseline"]


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
    t1 = _table1(tmp_path)
    assert "100 labels (n=1)" in t1["enum + aux"]
    cell = t1["enum + aux"]["100 labels (n=1)"]
    assert "±" not in cell and "(n=" not in cell  # n is in the header
    assert pd.isna(pd.read_csv(tmp_path / "tables/table1.csv").set_index("variant").loc["enum + aux", "ci95_L100"])


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
    if damage == "env":  # records that cannot be tied to one grid draw no table (docs/faults.md)
        with pytest.raises(UsageError, match="cannot be tied to one grid"):
            report.build_report(tmp_path)
        assert not (tmp_path / "tables" / "table1.csv").exists()
        return
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
    t1 = _table1(tmp_path)
    assert t1["enum"]["100 labels (n=2)"].endswith("(n=1) [1 stale]") and "baseline" in t1


_PIXELS = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def page_without_pixels(html: str) -> str:
    """The report page with every embedded PNG's bytes replaced by one placeholder: the text, the ids and the
    order and names of its figures stay."""
    return _PIXELS.sub("data:image/png;base64,<pixels>", html)


def test_page_without_pixels_keeps_what_is_data():
    a = '<p>x 0.62</p><img alt="a" src="data:image/png;base64,iVBORw0KGgo+/=">'
    assert page_without_pixels(a) == page_without_pixels(a.replace("iVBORw0KGgo+/=", "iVBORw0KGgp"))
    assert page_without_pixels(a) != page_without_pixels(a.replace("0.62", "0.63"))
    assert page_without_pixels(a) != page_without_pixels(a.replace('alt="a"', 'alt="b"'))


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
    assert report.rank_label_counts([100]) == [(100, "100 labels")]  # not "the largest label count here"
    assert report.rank_label_counts([100, 600]) == [(600, "600 labels (the largest label count here; 3000 absent)"),
                                                  (100, "100 labels")]
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


def test_verdict_groups_the_variants(built):
    """The headline is the paired verdict at 3000 labels with aux: with noisy seeds and n <= 2, inconclusive."""
    root, _ = built
    head = pd.read_csv(root / "tables/headline.csv", keep_default_na=False).iloc[0]
    assert head.labels == 3000 and head.better == "" and head.as_good == "" and head.margin == 0.01
    assert head.level == 0.95 and head.learning
    assert head.verdict.startswith("**At 3000 labels with the auxiliary loss, against enum + aux: enum-seq + aux and "
                                   "trace + aux are inconclusive**: enum-seq + aux +")
    assert "isolated time per epoch 3.91× enum + aux's" in head.verdict and "closest" not in head.verdict
    cands = pd.read_csv(root / "tables/headline_candidates.csv")
    assert set(cands.variant) == {"trace + aux", "enum-seq + aux"} and (cands.reference == "enum + aux").all()
    assert (cands.labels == 3000).all() and cands.aux.all() and set(cands.accuracy) == {"inconclusive"}
    v = pd.read_csv(root / "tables/verdicts.csv")
    same = v[(v.reference == "enum + aux") & (v.labels == 3000) & v.aux].set_index("variant")
    assert same.loc[list(cands.variant), "verdict"].tolist() == cands.verdict.tolist()  # one verdict, not two
    text = (root / "report.md").read_text()
    assert text.index("## Headline") < text.index("## Table 1") < text.index("## Paired differences")
    assert head.verdict in text


def test_verdict_names_who_can_replace_enum_aux(tmp_path):
    # every seed the same curve: trace + aux and enum-seq + aux as accurate as enum + aux (difference 0, interval
    # [0, 0]): as good, each with its time per epoch beside the verdict (timing probe), never in it
    fabricate_results(tmp_path, acc={("trace", True): 0.94}, noise=0.0, seeds=(0, 1, 2))  # s1: missing at 3000
    report.build_report(tmp_path, plots=False)
    head = pd.read_csv(tmp_path / "tables/headline.csv", keep_default_na=False).iloc[0]
    assert head.as_good == "enum-seq + aux;trace + aux" and head.better == ""
    assert head.verdict.startswith("**At 3000 labels with the auxiliary loss, against enum + aux: enum-seq + aux and "
                                   "trace + aux are as good (at most 1 point worse)**")
    assert "trace + aux +0.0 points (95 % CI +0.0 to +0.0, n = 2), isolated time per epoch 0.43× enum + aux's" in head.verdict
    cands = pd.read_csv(tmp_path / "tables/headline_candidates.csv").set_index("variant")
    assert cands.loc["trace + aux", "time_fraction"] == pytest.approx(0.43, abs=0.03)
    assert cands.loc["enum-seq + aux", "time_fraction"] > 1 and cands.loc["enum-seq + aux", "accuracy"] == "non-inferior"
    # the level is build_report's option, and the page says which was used
    report.build_report(tmp_path, plots=False, level=0.99)
    assert pd.read_csv(tmp_path / "tables/headline.csv").iloc[0].level == 0.99
    assert "This page: `--margin 0.01`, level 99 %." in (tmp_path / "report.md").read_text()


def test_verdict_without_enum_aux(tmp_path):
    fabricate_results(tmp_path)
    for p in (tmp_path / "runs").glob("enum+aux_*.json"):
        p.unlink()
    runs = pd.read_csv(tmp_path / "runs.csv")
    runs[~runs.cell.str.startswith("enum+aux_")].to_csv(tmp_path / "runs.csv", index=False)
    report.build_report(tmp_path, plots=False)
    head = pd.read_csv(tmp_path / "tables/headline.csv", keep_default_na=False).iloc[0]
    assert head.verdict.startswith("No verdict at 3000 labels with the auxiliary loss: no variant has seeds paired "
                                   "with finished enum + aux cells")
    summary = (tmp_path / "tables/summary.md").read_text()
    assert "nan" not in summary and "n = 0" not in summary and "minus the supervised-only baseline" not in summary


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
    pyproject = tomllib.loads((Path(report.__file__).parents[2] / "pyproject.toml").read_text())
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


# -- page layout: colours, heatmap, summary, HTML navigation -------------------------------------

def test_colours_by_family_scale_past_ten():
    from bench.report.common import family, family_colours
    names = ["trace", "enum", "enum-seq", "trace-avg", "trace-bx", "trace-k10", "gumbel", "gumbel-st", "rb-topk",
             "baseline", "rb-top3", "vimco", "mystery-a", "mystery-b", "mystery-c"]
    assert [family(n) for n in ("enum-seq", "trace-k10", "gumbel-st", "rb-topk", "baseline", "mystery-a")] == \
        ["enumeration", "score function", "relaxation", "Rao-Blackwell", "supervised only", None]
    pal = family_colours(names)
    assert len(set(pal.values())) == len(names)  # every estimator its own colour, unknown names included
    blue = lambda c: c[2] > c[0] and c[2] > c[1]
    orange = lambda c: c[0] > c[1] > c[2]
    assert all(blue(pal[n]) for n in ("enum", "enum-seq"))
    assert all(orange(pal[n]) for n in ("trace", "trace-avg", "trace-bx", "trace-k10", "vimco"))
    assert all(pal[n][1] > pal[n][0] for n in ("gumbel", "gumbel-st"))  # greens


def test_grad_error_heatmap_table(built):
    """Where grad_variance.csv has the MSE against the exact gradient, the heatmap shows its ratio to enum's."""
    root, _ = built
    m = pd.read_csv(root / "tables/grad_error_vs_enum.csv")
    assert set(m.step_kind) == {"unsup"} and set(m.param_group) == {"encoder_y", "encoder_z", "decoder"}
    assert "median_ratio_to_enum" not in m
    assert (m[m.variant == "enum"].median_mse_ratio_to_enum == 1).all()
    assert (m[m.variant == "trace"].median_mse_ratio_to_enum > 10).all()
    text = (root / "report.md").read_text()
    assert "## Gradient error relative to enum" in text
    assert "Each estimator's gradient MSE against the exact gradient relative to enum's" in text


def test_summary_lines_from_the_paired_verdicts(built):
    root, _ = built
    lines = summary_bullets(root)
    assert len(lines) == 7  # 4 epochs: a budget line; no stateful baseline: no 8th line
    assert lines[4].startswith("- What this budget supports (4 epochs per cell): the gradient error")
    assert lines[6].startswith("- Gradient error at 3000 labels, encoder_y, unlabeled step")
    head = pd.read_csv(root / "tables/headline.csv", keep_default_na=False).iloc[0]
    assert lines[0][2:] == head.verdict  # the same verdict as the Headline
    assert lines[1].startswith("- Elsewhere: at 100 labels with the auxiliary loss, against enum + aux:")
    assert "enum + aux minus the supervised-only baseline is" in lines[1]
    # the headline setting against the clock, from the wall-time section's own tables
    clock = lines[2]
    assert clock.startswith("- Against the clock at 3000 labels with the auxiliary loss (times from the isolated "
                            "timing probe, cpu (Intel Xeon (fake)), 2 threads): in 60 s of training per run, ")
    fb = pd.read_csv(root / "tables/fixed_budget.csv")
    fb = fb[(fb.labels == 3000) & fb.aux & (fb.variant != "enum + aux")].sort_values("mean_diff", ascending=False)
    said = [clock.index(f"{r.variant} {round(r.mean_diff * 100, 1) + 0.0:+.1f} points") for r in fb.itertuples()]
    assert len(said) == 2 and said == sorted(said)  # every variant, best first
    assert "(n = 1, no interval) (n = 1" not in clock  # the interval's note is said once
    tt = pd.read_csv(root / "tables/time_to_target.csv")
    tt = tt[(tt.labels == 3000) & tt.aux & (tt.variant != "enum + aux") & (tt.reached > 0)]
    for r in tt.itertuples():
        assert (f"{r.variant} takes {r.time_ratio_median:.2f}× enum + aux's time (median over the {r.reached} of "
                f"{r.n} seeds that get there)") in clock
    assert len(tt) and "to come within 1 point of enum + aux's best validation accuracy (per seed)" in clock
    assert lines[3].startswith("- Caveats: n = 1, 2 paired seeds per comparison (with n = 2 the 95 % interval spans "
                               "±12.7 standard errors")
    assert "4 epochs per cell, bench protocol" in lines[3] and "left out seeds" in lines[3]
    assert "unpaired means" not in "".join(lines)
    rel = pd.read_csv(root / "tables/timing_relative.csv").set_index("estimator")
    assert f"{rel.loc['enum', 'relative_to_trace']:.1f}× trace's" in lines[5]
    text = (root / "report.md").read_text()
    assert text.index("## Summary") < text.index("## Headline") and lines[0][2:] in text


def test_no_clock_line_where_enum_aux_does_not_learn(tmp_path):
    """Where enum + aux does not beat the supervised-only baseline, no estimator verdict is drawn, and the summary
    says nothing against the clock either (the wall-time section keeps its tables)."""
    fabricate_results(tmp_path, acc={("enum", True): 0.50, ("enum-seq", True): 0.50, ("trace", True): 0.45})
    report.build_report(tmp_path, plots=False)
    lines = summary_bullets(tmp_path)
    assert any("not learning" in l for l in lines) and not any("Against the clock" in l for l in lines)
    assert len(pd.read_csv(tmp_path / "tables/fixed_budget.csv"))


def test_no_step_ratio_across_two_machines(tmp_path):
    """A folder whose timing probes ran in parts on two CPUs (enum's on one, the others' on another, as a grid
    extended in a later session on another machine) says no "enum takes ... × trace's" line: that ratio would
    divide one CPU's milliseconds by another's."""
    fabricate_results(tmp_path)
    t = pd.read_csv(tmp_path / "timing.csv")
    t.loc[t.estimator == "enum", "device_name"] = "AMD EPYC (fake)"
    t.to_csv(tmp_path / "timing.csv", index=False)
    report.build_report(tmp_path, plots=False)
    assert not any("× trace's" in l for l in summary_bullets(tmp_path))
    t.loc[t.estimator == "trace", "device_name"] = "AMD EPYC (fake)"  # enum and trace timed on one machine again
    t.to_csv(tmp_path / "timing.csv", index=False)
    report.build_report(tmp_path, plots=False)
    assert any(l.startswith("- Per unlabeled step (cpu, timing probe") and "× trace's" in l
               for l in summary_bullets(tmp_path))


def test_no_time_per_epoch_ratio_across_two_machines(tmp_path):
    """The committed table1 folder's enum + aux cells trained on AMD EPYC and the other cells on an Intel Xeon: the
    decision table, the time ranking and the hero take every time per epoch from the isolated timing probe (one
    machine) instead of dividing one CPU's seconds by another's (trace + aux was "0.14×" enum + aux's that way, the
    probe says 0.37×). With every cell on one machine, the cells' own seconds come back."""

    from bench.analysis.paired import time_fraction
    from bench.report.data import load_results

    root = tmp_path / "table1"
    shutil.copytree(Path(__file__).resolve().parents[1] / "results/reference/table1-cpu", root,
                    ignore=shutil.ignore_patterns("plots", "report.*", "tables", "samples"))
    res = load_results(root)
    assert len(set(res.runs.device_name)) == 2
    probe = time_fraction(res.timing, "trace", True, ("enum", True), 100)
    report.build_report(root, plots=False)
    d = pd.read_csv(root / "tables/decision.csv").set_index("variant")
    assert d.loc["trace + aux", "time_x_enum_aux"] == pytest.approx(probe) and 0.3 < probe < 0.5
    assert pd.isna(d.loc["baseline", "time_x_enum_aux"])  # no probe for it: no time, not another CPU's
    tm = pd.read_csv(root / "tables/rank_time.csv")
    assert set(tm.time_source) == {"probe"} and "baseline" not in set(tm.estimator)
    assert "isolated timing probe" in (root / "tables/decision.md").read_text()

    for path in (root / "runs").glob("*.json"):  # every cell on one machine: the cells' own seconds again
        record = json.loads(path.read_text())
        record["device_name"] = "Intel(R) Xeon(R) Processor"
        path.write_text(json.dumps(record))
    report.build_report(root, plots=False)
    runs = load_results(root).runs
    med = runs.groupby("estimator").seconds_per_epoch.median()
    d = pd.read_csv(root / "tables/decision.csv").set_index("variant")
    assert d.loc["trace + aux", "time_x_enum_aux"] == pytest.approx(med["trace"] / med["enum"])
    assert set(pd.read_csv(root / "tables/rank_time.csv").time_source) == {"cells"}


README = Path(__file__).resolve().parents[1] / "README.md"
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "quick-cpu"


def test_readme_quotes_the_reports_summary():
    """The README's summaries and run cost are the reference reports' own, word for word: each block names
    the file it was pasted from (regenerate the report, then `python -m bench.report.readme`)."""
    from bench.report import readme

    text = README.read_text()
    found = readme.blocks(text)
    assert {"summary", "summary-quick", "run-cost"} <= {name for name, _, _ in found}
    assert text.count(":begin (generated: ") == len(found)  # no block the pattern missed
    assert readme.sync(README, check=True) == []
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):
        assert (README.parent / figure).is_file(), figure


def test_readme_sync_pastes_each_block_from_its_file(tmp_path, capsys):
    from bench.report import readme

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.md").write_text("- new line\n")
    page = tmp_path / "README.md"
    page.write_text("# x\n<!-- a:begin (generated: t/a.md; a test) -->\n- old line\n<!-- a:end -->\ntail\n")
    assert readme.main(["--readme", str(page), "--check"]) == 1 and "a differ" in capsys.readouterr().out
    assert readme.main(["--readme", str(page)]) == 0
    assert page.read_text() == "# x\n<!-- a:begin (generated: t/a.md; a test) -->\n- new line\n<!-- a:end -->\ntail\n"
    assert readme.main(["--readme", str(page), "--check"]) == 0
    (tmp_path / "t" / "a.md").unlink()
    before = page.read_text()
    assert readme.main(["--readme", str(page)]) == 2
    assert "quotes t/a.md, which is missing" in capsys.readouterr().err and page.read_text() == before


def test_html_navigation(built):
    root, _ = built
    html = (root / "report.html").read_text()
    toc = re.search(r'<nav id="toc">(.*?)</nav>', html, re.S).group(1)
    targets = re.findall(r'href="#([^"]+)"', toc)
    ids = re.findall(r'<section id="([^"]+)">', html)
    # every section but Tuning (no --tuned choice file in this folder)
    assert targets == ids and len(ids) == len(report.SECTIONS) - 1 and len(set(ids)) == len(ids)
    assert "tuning" not in ids
    for i in ids:
        assert f'<a class="anchor" href="#{i}"' in html
    assert html.count("<figure>") == html.count("<figcaption>") == html.count("<img ") == 15
    every_id = re.findall(r' id="([^"]+)"', html)
    assert len(every_id) == len(set(every_id)), sorted(i for i in set(every_id) if every_id.count(i) > 1)
    for csv in set(re.findall(r'<a href="(tables/[^"]+\.csv)"', html)):
        assert (root / csv).is_file(), csv
    assert 'href="tables/table1.csv"' in html and html.count('class="sortable"') == html.count("<table")


def test_a_new_section_is_one_module_and_one_list_entry(tmp_path, monkeypatch):
    """What docs/report.md shows: a module with build(ctx) -> Section, appended to SECTIONS."""
    import types
    from bench.report import page
    from bench.report.context import Section, Table

    def build(ctx):
        counts = ctx.res.runs.groupby("status").size().reset_index(name="cells")
        ctx.write_table(counts, "cells_per_status", "Cells per status")
        return Section("cells-per-status", "Cells per status", tables=[Table("Cells per status", counts,
                                                                             "cells_per_status")])

    monkeypatch.setattr(page, "SECTIONS", [*page.SECTIONS, types.SimpleNamespace(build=build)])
    fabricate_results(tmp_path)
    report.build_report(tmp_path, plots=False)
    html = (tmp_path / "report.html").read_text()
    assert '<a href="#cells-per-status">' in html and 'id="table-cells_per_status"' in html
    assert 'href="tables/cells_per_status.csv"' in html and (tmp_path / "tables/cells_per_status.md").is_file()


def _report_modules():
    return sorted(Path(report.__file__).parent.rglob("*.py"))


def test_report_package_layout():
    """No file over 600 lines, no import inside a function, no import circle among bench/report's modules."""
    import ast
    bench = Path(report.__file__).parents[1]
    graph = {}
    for path in _report_modules():
        text = path.read_text()
        assert len(text.splitlines()) <= 600, path
        tree = ast.parse(text)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}: import inside {fn.name}()"
        mod = ".".join(path.relative_to(bench.parent).with_suffix("").parts).removesuffix(".__init__")
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                target = f"{base}.{node.module}" if node.module else base
                deps.add(target)
                if not node.module:
                    deps.update(f"{base}.{a.name}" for a in node.names)
        graph[mod] = deps
    known = set(graph)

    def visit(m, stack):
        assert m not in stack, " -> ".join([*stack, m])
        for d in graph.get(m, ()):
            if d in known and d != m:
                visit(d, [*stack, m])

    for m in known:
        visit(m, [])


def test_readme_states_no_unchecked_number():
    """Outside its generated blocks and code, the README's only number is the Python version, which must be
    pyproject's. A sentence with a new number needs a generated block or a check here."""
    import tomllib
    text = README.read_text()
    text = re.sub(r"<!-- ([\w-]+):begin.*?<!-- \1:end -->", "", text, flags=re.S)  # generated blocks
    text = re.sub(r"```.*?```", "", text, flags=re.S)          # code blocks
    text = re.sub(r"`[^`]*`", "", text)                        # inline code (commands, names)
    text = re.sub(r"\]\([^)]*\)", "]", text)                   # link targets
    numbers = re.findall(r"(?<![\w.\-/])\d+(?:\.\d+)*%?(?![\w\-/])", text)
    requires = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires.startswith(">=")
    assert numbers == [requires[2:]], numbers
    assert f"Python {requires[2:]} or newer" in text


def test_beside_line_counts_cells_that_shared_the_machine():
    from types import SimpleNamespace

    from bench.report.sections.overview import beside_line

    runs = pd.DataFrame({"beside": [0, 1, 2, None], "other_cpu_load": [0.0, 1.0, 0.9, None]})
    line = beside_line(SimpleNamespace(res=SimpleNamespace(runs=runs)))
    assert line.startswith("Beside what: 1 of 3 finished cells ran with no other task of this folder, 2 beside others (up to 2")
    assert "median of 0.9 cores" in line and "not isolated measurements" in line
    alone = beside_line(SimpleNamespace(res=SimpleNamespace(runs=runs.iloc[:1])))
    assert "1 of 1 finished cells" in alone and "not isolated" not in alone
    assert beside_line(SimpleNamespace(res=SimpleNamespace(runs=pd.DataFrame({"cell": ["a"]})))) is None


def test_a_run_too_short_for_verdicts_says_so(tmp_path, built):
    """One seed (as smoke runs): a banner first in the summary; a full folder has none."""
    fabricate_results(tmp_path, seeds=(0,))
    report.build_report(tmp_path, plots=False)
    summary = (tmp_path / "report.md").read_text().split("## Summary", 1)[1]
    assert summary.lstrip().startswith("**A pipeline check, not a result** (one seed (no interval))")
    assert "pipeline check" not in (built[0] / "report.md").read_text()


def test_the_run_section_counts_the_cells_that_flushed_subnormals():
    from types import SimpleNamespace

    from bench.report.sections.overview import flush_line

    runs = pd.DataFrame({"status": ["ok", "ok", "diverged", "missing"], "flush_denormal": [True, None, True, None]})
    line = flush_line(SimpleNamespace(res=SimpleNamespace(runs=runs)))
    assert line.startswith("Subnormal floats: flushed to zero in 2 of 3 finished cells")
    assert "the other 1 ran without it" in line
    every = flush_line(SimpleNamespace(res=SimpleNamespace(runs=runs.assign(flush_denormal=True))))
    assert "in 3 of 3 finished cells" in every and "without it" not in every
    assert flush_line(SimpleNamespace(res=SimpleNamespace(runs=runs.assign(flush_denormal=None)))) is None
    assert flush_line(SimpleNamespace(res=SimpleNamespace(runs=runs.drop(columns="flush_denormal")))) is None
