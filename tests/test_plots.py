"""Plots that draw what they say: every panel of every figure the report makes has data on it, and none
shows more series than a reader can tell apart (bench.report.plotting.figure_problems). Run on the
fabricated folder, on one with many estimators (small multiples by family), and, slow, on the committed
references."""
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from bench import report
from bench.report.plotting import MAX_SERIES, figure_problems
from tests import report_fixtures as rf

REFERENCES = [p for p in (Path(__file__).resolve().parents[1] / "results" / "reference").glob("*-cpu")
              if (p / "env.json").is_file() and p.name != "table1-cpu"]
MANY = ("trace", "enum", "trace-avg", "trace-bx", "nvil", "rloo", "gumbel", "gumbel-st", "rb-topk", "baseline")


def _problems(monkeypatch, root) -> dict:
    """{png name: [problem, ...]} of every figure saved while the report on ``root`` is built."""
    found = {}
    save = Figure.savefig

    def checked(fig, path, *a, **k):
        if fig.axes:  # adopt_png's frame around an image drawn elsewhere has no panels
            found[Path(str(path)).name] = figure_problems(fig)
        return save(fig, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", checked)
    report.build_report(root)
    return found


def test_the_checker_sees_an_empty_panel_and_a_crowded_one():
    fig, (a, b, c) = plt.subplots(1, 3)
    a.plot([0], [1])                       # one point, no marker: draws nothing
    a.axvline(0)                           # a reference line is not data
    for i in range(MAX_SERIES + 1):
        b.plot([0, 1], [i, i + 1], color=plt.cm.viridis(i / MAX_SERIES))
    c.plot([0], [1], marker="o")           # one point with a marker: drawn
    assert figure_problems(fig) == ["panel 1 (untitled): empty",
                                    f"panel 2 (untitled): {MAX_SERIES + 1} series (at most {MAX_SERIES})"]
    plt.close(fig)


def test_no_empty_or_crowded_panel_on_the_fabricated_folder(tmp_path, monkeypatch):
    rf.fabricate_results(tmp_path, relaxation=True)
    found = _problems(monkeypatch, tmp_path)
    assert {"learning_curves.png", "accuracy_vs_labels.png", "grad_variance.png", "paired_differences.png",
            "hero.png"} <= set(found)
    assert {k: v for k, v in found.items() if v} == {}


def test_many_estimators_become_small_multiples(tmp_path, monkeypatch):
    """19 variants: learning curves, accuracy vs time, test ELBO and accuracy vs labels split by family, none over
    the limit."""
    monkeypatch.setattr(rf, "ESTIMATORS", MANY)
    many = rf.variants
    monkeypatch.setattr(rf, "variants", lambda estimators=MANY: many(estimators))
    for est in MANY:
        monkeypatch.setitem(rf._MS, est, rf._MS.get(est, 8.0))
        monkeypatch.setitem(rf.REF_STEP, (est, "unsup"), rf.REF_STEP.get((est, "unsup"), "unsup-sampled"))
    acc = {(e, a): rf._ACC.get((e, a), 0.5 + 0.3 * a) for e, a in many(MANY)}
    rf.fabricate_results(tmp_path, acc=acc)
    found = _problems(monkeypatch, tmp_path)
    assert {"learning_curves.png", "accuracy_vs_time.png", "test_elbo_vs_step.png", "test_elbo_vs_time.png"} <= set(found)
    assert {k: v for k, v in found.items() if v} == {}


@pytest.mark.slow
@pytest.mark.parametrize("src", REFERENCES, ids=lambda p: p.name)
def test_no_empty_or_crowded_panel_in_the_references(tmp_path, monkeypatch, src):
    import shutil
    dst = tmp_path / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tables", "plots", "report.*", ".lock", "cache"))
    found = _problems(monkeypatch, dst)
    assert {k: v for k, v in found.items() if v} == {}


def test_paired_panels_list_only_the_variants_compared_there(monkeypatch, tmp_path):
    """A setting where only the baseline is compared (no aux: the long preset) gets one row, not the aux
    variants' empty rows; every row a panel lists has its points."""
    import pandas as pd
    from bench.analysis.paired import plot_paired

    def row(ref, variant, est, labels, aux):
        return {"reference": ref, "variant": variant, "estimator": est, "labels": labels, "aux": aux,
                "diffs": [0.01, 0.02, 0.03], "mean_diff": 0.02, "ci_low": 0.0, "ci_high": 0.04}
    paired = pd.DataFrame([row("enum + aux", "baseline", "baseline", 100, False),
                           row("enum + aux", "trace + aux", "trace", 100, True),
                           row("enum + aux", "gumbel + aux", "gumbel", 100, True)])
    figs = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figs.append(fig), save(fig, *a, **k))[1])
    plot_paired(paired, tmp_path / "p.png")
    (fig,) = figs
    shown = {ax.get_title().split("\n")[0]: [t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes}
    assert shown == {"100 labels, no aux": ["baseline"], "100 labels, aux": ["gumbel + aux", "trace + aux"]}
    assert figure_problems(fig) == []


@pytest.mark.parametrize("lo, hi, want", [(5.8, 16.0, {6, 10, 15}), (0.5, 300.0, {1, 2, 5, 10, 20, 50, 100, 200})])
def test_a_log_axis_labels_numbers_inside_its_view(lo, hi, want):
    """A time axis from 5.8 to 16 s (the table1 hero) carried one label, 10: under a decade the ticks step
    through 1, 1.5, 2, 3, ..., 9 x 10^k; over a decade they stay 1, 2, 5."""
    from bench.report.plotting import plain_log_ticks

    fig, ax = plt.subplots()
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_xlim(lo, hi)
    fig.canvas.draw()
    shown = {float(t.get_text()) for t in ax.get_xticklabels() if t.get_text()}
    assert want <= shown and (hi / lo >= 10) == (not {3, 4, 7} & shown)
    plt.close(fig)
