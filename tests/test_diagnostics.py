"""The diagnostics tables rank by the named definitions; the relaxations' schedules fit every preset."""
import math
import shutil

import pandas as pd
import pytest

from bench.analysis import diagnostics as D
from bench.run.grid import _steps_per_epoch, expand, load_preset, make_grid, preset_names
from ssvae import RunConfig
from ssvae.estimators import get_estimator
from ssvae.model import SSVAE


def _grad(rows):
    base = {"aux": False, "labels": 3000, "seed": 0, "trajectory": "common", "step_kind": "unsup",
            "param_group": "encoder_y", "n_samples": 200}
    out = []
    for est, step, mse, var in rows:
        out.append({**base, "estimator": est, "step": step, "mse": mse, "mse_lo": mse * 0.9, "mse_hi": mse * 1.1,
                    "variance": var, "variance_lo": var * 0.9, "variance_hi": var * 1.1, "bias_sq": mse - var,
                    "bias_sq_lo": 0, "bias_sq_hi": 0, "cosine": 0.9, "cosine_lo": 0.8, "cosine_hi": 1, "snr": 0.1,
                    "snr_lo": 0, "snr_hi": 0.2})
    return pd.DataFrame(out)


GRAD = _grad([("trace", 0, 100.0, 100.0), ("enum", 0, 1.0, 1.0), ("gumbel", 0, 50.0, 1.0),
              ("trace", 250, 40.0, 40.0), ("enum", 250, 2.0, 2.0), ("gumbel", 250, 0.5, 0.4),
              ("rb-topk", 250, 1.5, 1.5)])
TIMING = pd.DataFrame([{"estimator": e, "aux": a, "step_kind": k, "median_ms": ms}
                       for e, ms in (("trace", 10.0), ("enum", 100.0), ("gumbel", 10.0), ("rb-topk", 20.0))
                       for a in (False, True) for k in ("unsup", "sup")])


def test_mse_table_uses_the_last_checkpoint_and_ranks_by_mse():
    t = D.mse_table(GRAD)
    assert set(t["step"]) == {250}
    assert list(t["estimator"]) == ["gumbel", "rb-topk", "enum", "trace"]
    assert list(t["rank_mse"]) == [1, 2, 3, 4]
    assert t.set_index("estimator")["biased"].to_dict() == {"gumbel": True, "rb-topk": False, "enum": False,
                                                            "trace": False}
    first = D.mse_table(GRAD, checkpoint="first")
    assert set(first["step"]) == {0} and first.iloc[0]["estimator"] == "enum"


def test_efficiency_is_mse_times_seconds_per_unlabeled_step_and_reorders():
    t = D.efficiency_table(GRAD, TIMING).set_index("estimator")
    assert t.loc["enum", D.EFFICIENCY] == pytest.approx(2.0 * 0.1)
    assert t.loc["rb-topk", D.EFFICIENCY] == pytest.approx(1.5 * 0.02)
    assert t.loc["enum", f"{D.EFFICIENCY}_hi"] == pytest.approx(2.2 * 0.1)
    assert t.loc["enum", "rank_mse"] == 3 and t.loc["enum", "rank_efficiency"] == 3
    assert t.loc["trace", "rank_efficiency"] == 4 and t.loc["rb-topk", "rank_efficiency"] == 2
    order = D.ranking(D.efficiency_table(GRAD, TIMING))["order"].iloc[0]
    assert order == "gumbel (biased) < rb-topk < enum < trace"
    assert D.ranking(D.efficiency_table(GRAD, TIMING), by="mse")["order"].iloc[0].startswith("gumbel (biased)")


def test_trajectory_ratios_pair_checkpoints():
    r = D.trajectory_ratios(GRAD, ["gumbel"], against="trace")
    assert list(r["step"]) == [0, 250]
    assert list(r["ratio"]) == pytest.approx([0.01, 0.01])


def test_efficiency_plot_is_written(tmp_path):
    path = D.plot_efficiency(D.efficiency_table(GRAD, TIMING), tmp_path / "eff.png")
    assert path is not None and (tmp_path / "eff.png").stat().st_size > 1000
    assert D.plot_efficiency(D.efficiency_table(GRAD.iloc[:0], TIMING), tmp_path / "none.png") is None


def test_efficiency_plot_labels_do_not_overlap_where_points_crowd():
    """Four points within a label's height of each other (as trace-bx and trace-avg, or enum and rloo, sit
    in the quick reference): every label gets its own box, clear of the others and of the other points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    x, y = np.array([0.027, 0.0275, 0.021, 0.026]), np.array([28.0, 36.0, 48.0, 31.0])
    ax.plot(x, y, "o")
    ax.set(xscale="log", yscale="log", xlim=(0.01, 0.1), ylim=(1, 1000))
    D._place_labels(ax, ["trace-avg", "trace-bx", "rb-topk-plain", "third"], x, y)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 4
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    px = ax.transData.transform(np.column_stack([x, y]))
    for i, b in enumerate(boxes):
        assert not any(b.contains(*p) for j, p in enumerate(px) if j != i)
    plt.close(fig)


def test_task_costs_count_the_probe_draws_references_and_baselines():
    """One cost rule for the ETA and `bench list` (bench.run.tasks.KINDS): more draws cost more, linearly; a
    stateful probe trains the trajectory and its references; a cell pays for the probe on its own run."""
    from bench.run.cost import STEP_WEIGHT, SUP_WEIGHT
    from bench.run.tasks import KINDS

    tasks = expand(make_grid(load_preset("quick"), {"labels": [3000], "seeds": [0]}))
    cost = lambda t: KINDS[t["kind"]].cost(t)
    common = {t["id"]: t for t in tasks if t["kind"] == "common"}
    plain, stateful = common["common_L3000_s0_rb-topk"], common["common_L3000_s0_trace-avg"]
    doubled = cost({**plain, "n_samples": 2 * plain["n_samples"]})
    half = cost({**plain, "n_samples": plain["n_samples"] // 2})
    assert doubled - cost(plain) == pytest.approx(2 * (cost(plain) - half)) and cost(plain) > half
    # draws are priced at the estimator's measured step weight; a stateful probe also trains the trajectory
    # up to its last checkpoint and computes the references
    per_draw = lambda est: STEP_WEIGHT[est] + SUP_WEIGHT
    draws = lambda t, est: t["n_samples"] * per_draw(est) * len(t["checkpoints"])
    assert cost(stateful) - draws(stateful, "trace-avg") == pytest.approx(
        cost(plain) - draws(plain, "rb-topk") + max(stateful["checkpoints"])
        + 2 * stateful["reference_draws"] * len(stateful["checkpoints"]))
    cell = next(t for t in tasks if t["id"] == "rb-topk_L3000_s0")
    unprobed = cost({**cell, "checkpoints": []})
    assert cost(cell) - unprobed == pytest.approx(
        len(cell["checkpoints"]) * (cell["n_samples"] * per_draw("rb-topk") + 2 * cell["reference_draws"]))
    # the probe's share, which the dry run and `bench list` print: all of a common probe, the own-run part of a cell
    assert KINDS["train"].probe(cell) == pytest.approx(cost(cell) - unprobed)
    assert KINDS["common"].probe(plain) == cost(plain)
    timing = next(t for t in tasks if t["kind"] == "timing")
    assert KINDS["timing"].probe(timing) == 0.0
    base = next(t for t in tasks if t["kind"] == "train" and t["config"]["estimator"] == "baseline")
    assert cost(base) == cost({**base, "checkpoints": []})  # the baseline has no latent y to probe


def _fake_records(folder, tasks, rate, load=1.0, device="AMD EPYC", ran=1.0):
    """Finished records of ``tasks`` whose parts ran at ``rate`` seconds per unit (timing: per task); the cells
    trained ``ran`` of their epochs (early stopping), their training and evaluation time cut to match."""
    import json

    from bench.run.tasks import cost_parts

    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "probes").mkdir(exist_ok=True)
    clock = 1.0e9
    for t in tasks:
        parts = cost_parts(t)
        secs = {k: parts[k] * rate[t["kind"] if t["kind"] == "timing" else k] for k in parts}
        if t["kind"] == "train":
            secs = {k: v * (ran if k in ("train", "eval") else 1.0) for k, v in secs.items()}
        record = {"id": t["id"], "kind": t["kind"], "spec": t, "status": "ok", "started": clock,
                  "finished": clock + sum(secs.values()), "threads": 1, "other_cpu_load": load, "device_name": device,
                  "trajectory_cache": "read"}
        if t["kind"] == "train":
            record["metrics"] = {"train_seconds": secs["train"], "eval_seconds": secs["eval"],
                                 **({"epochs_run": t["config"]["epochs"] * ran} if ran != 1.0 else {})}
        sub = "runs" if t["kind"] == "train" else "probes"
        (folder / sub / f"{t['id']}.json").write_text(json.dumps(record))
        clock += 1000.0


def test_estimate_prices_each_kind_and_part_at_its_own_measured_rate(tmp_path):
    """bench.run.estimate: from finished records whose training, evaluation, probe and timing probes ran at
    known rates, each rate comes back, and a grid is priced part by part: a single rate would misprice a
    grid whose mix differs (a long run trains, a quick one probes)."""
    from bench.run import estimate
    from bench.run.progress import task_cost
    from bench.run.tasks import cost_parts

    rate = {"train": 0.1, "eval": 3.0, "probe": 0.02, "timing": 0.5}
    tasks = expand(make_grid(load_preset("quick"), {"labels": [100, 3000], "seeds": [0]}))
    _fake_records(tmp_path / "quick-cpu", tasks, rate, load=1.0)
    shutil.copytree(tmp_path / "quick-cpu", tmp_path / "zz-copy")  # the same runs copied (results/pending)
    cal = estimate.calibrate([tmp_path], "AMD EPYC", cpus=2)
    assert cal.machine == "AMD EPYC" and cal.sources == {str(tmp_path / "quick-cpu"): len(tasks)}
    for part in ("train", "eval", "probe"):
        assert cal.rate("train", part) == pytest.approx(rate[part], rel=1e-6)
    assert cal.rate("common:read", "probe") == pytest.approx(rate["probe"], rel=1e-6)
    assert cal.rate("timing", "train") == pytest.approx(rate["timing"], rel=1e-6)
    long = [t for t in expand(make_grid(load_preset("long"), {"labels": [100], "seeds": [0]})) if t["kind"] != "timing"]
    want = sum(cost_parts(t)[k] * rate[k] for t in long for k in ("train", "eval", "probe"))
    assert sum(cal.seconds(t) for t in long) == pytest.approx(want)
    single = sum(task_cost(t) for t in long) * sum(
        cost_parts(t)[k] * rate[k] for t in tasks if t["kind"] != "timing" for k in ("train", "eval", "probe")) / sum(
        task_cost(t) for t in tasks if t["kind"] != "timing")
    assert abs(single / want - 1) > 0.25  # the mix differs: one rate for all would be far off


def test_a_cell_ended_early_is_priced_by_the_epochs_it_ran(tmp_path):
    """Cells that early stopping ended halfway took half the time of their ``epochs``: their rate is the time over
    the work of the epochs they ran (counting every epoch would halve it and underprice the next run)."""
    from bench.run import estimate

    rate = {"train": 0.1, "eval": 3.0, "probe": 0.02, "timing": 0.5}
    tasks = expand(make_grid(load_preset("quick"), {"labels": [100], "seeds": [0], "epochs": 8}))
    _fake_records(tmp_path / "stopped", tasks, rate, ran=0.5)
    cal = estimate.calibrate([tmp_path], "AMD EPYC", cpus=2)
    for part in ("train", "eval"):
        assert cal.rate("train", part) == pytest.approx(rate[part], rel=1e-6)


def test_estimate_takes_out_the_contention_the_records_measured(tmp_path):
    """Records that ran beside a third busy process (load 2 on 2 cores: factor 1.5) price a quiet plan at
    two thirds of what they took; records of another CPU are used only when this one has none, and say so."""
    from bench.run import estimate

    rate = {"train": 0.3, "eval": 9.0, "probe": 0.06, "timing": 1.5}
    tasks = expand(make_grid(load_preset("smoke"), {"labels": [100]}))
    _fake_records(tmp_path / "busy", tasks, rate, load=2.0, device="Other CPU")
    cal = estimate.calibrate([tmp_path], "AMD EPYC", cpus=2)
    assert cal.machine is None and "OTHER machines" in cal.describe()
    assert cal.rate("train", "train") == pytest.approx(0.2, rel=1e-6)
    assert estimate.plan_contention(2, 1, cpus=2) == 1.0 and estimate.plan_contention(4, 1, cpus=2) == 2.0


def test_makespan_plays_out_the_schedule():
    """Exclusive tasks run alone; the rest fill the first free worker in queue order."""
    from bench.run.estimate import makespan

    tasks = [{"id": "t", "exclusive": True}, {"id": "a"}, {"id": "b"}, {"id": "c"}]
    price = {"t": 5.0, "a": 10.0, "b": 1.0, "c": 1.0}.get
    assert makespan(tasks, 2, lambda t: price(t["id"])) == 5.0 + 10.0
    assert makespan(tasks, 1, lambda t: price(t["id"])) == 5.0 + 12.0
    assert makespan(tasks[:1] + [{"id": "b"}, {"id": "c"}, {"id": "a"}], 2, lambda t: price(t["id"])) == 5.0 + 11.0


def test_stateful_common_probes_run_first_and_write_the_trajectory_cache_for_the_rest():
    tasks = expand(make_grid(load_preset("quick"), {"labels": [100, 3000], "seeds": [0, 1]}))
    common = [t for t in tasks if t["kind"] == "common"]
    for key in ("L100_s0", "L100_s1", "L3000_s0", "L3000_s1"):
        ests = [t["estimators"][0] for t in common if t["id"].startswith(f"common_{key}_")]
        flags = [get_estimator(e).stateful for e in ests]
        assert flags == sorted(flags, reverse=True) and sum(flags) == 3, (key, ests)
        quick = load_preset("quick")
        assert len(ests) == len(quick["estimators"]) + len(quick["probe"]["probed_only"])  # enum-k10 probed only


@pytest.mark.parametrize("preset", preset_names())
def test_relaxation_temperature_reaches_its_floor_within_every_preset(preset):
    """Every relaxed cell's schedule reaches tau_min before its last step (and starts at tau0); the
    common probe carries the own runs' schedules."""
    grid = make_grid(load_preset(preset))
    tiny = SSVAE(input_size=4, z_dim=1, hidden=(2,))
    seen = 0
    own = {}
    for task in expand(grid):
        if task["kind"] != "train":
            continue
        cfg = RunConfig.from_dict(task["config"])
        obj = get_estimator(cfg.estimator).build(tiny, cfg.option_dict)
        if not hasattr(obj, "schedule"):
            continue
        steps = cfg.epochs * _steps_per_epoch(cfg)
        assert obj.schedule(0) == obj.schedule.tau0
        assert obj.schedule(steps - 1) == obj.schedule.tau_min, (task["id"], steps, obj.schedule)
        assert obj.schedule.floor_step() <= steps - 1
        own[(cfg.estimator, cfg.labels)] = cfg.option_dict
        seen += 1
    relaxed = [e for e in grid.estimators if hasattr(get_estimator(e).build(tiny, {}), "schedule")]
    assert seen == len(relaxed) * len(grid.labels) * len(grid.seeds) * len(grid.aux) or (grid.tune and seen), \
        (preset, seen, relaxed)
    # a tuning grid has several option sets per estimator; its common probe uses the untuned options
    for task in ([] if grid.tune else expand(grid)):
        if task["kind"] == "common":
            labels = task["config"]["labels"]
            for est in task["estimators"]:
                if (est, labels) in own:
                    assert task["own_options"][est] == own[(est, labels)]


def test_budget_schedule_is_monotone_and_reaches_the_floor_at_half():
    from ssvae.relax import TemperatureSchedule

    for steps in (2, 20, 1250, 13250):
        s = TemperatureSchedule.for_budget(steps)
        taus = [s(t) for t in range(steps)]
        assert all(a >= b for a, b in zip(taus, taus[1:]))
        assert taus[0] == 1.0 and taus[-1] == 0.5
        assert s.floor_step() <= math.ceil(steps / 2) + s.every


def test_eta_starts_from_the_plan_and_moves_to_the_observed_pace():
    """At minute one the ETA is the plan's (not an extrapolation of a slow start to hours); a run going at
    half the planned pace ends up with an ETA near twice the plan's time for the rest."""
    import io

    from bench.run.progress import Progress

    todo = [{"id": f"t{i}", "kind": "timing"} for i in range(10)]
    p = Progress(todo, todo, stream=io.StringIO(), seconds={t["id"]: 60.0 for t in todo}, wall=300.0)
    assert p.eta(0.0, 60.0) == pytest.approx(300.0 * 90 / 30)  # pulled toward the plan by K = 30 s
    assert p.eta(0.0, 0.0) == pytest.approx(300.0)
    half = p.eta(300.0, 300.0)  # half the work (300 of 600 units) in the plan's 150 s x 2
    assert half == pytest.approx(150.0 * (300 + 30) / (150 + 30))
    assert p.eta(600.0, 1000.0) == 0.0
    bare = Progress(todo, todo, stream=io.StringIO())  # no plan: the observed pace alone
    assert bare.eta(0.0, 10.0) is None


def test_sibling_common_probes_wait_for_the_one_that_trains_their_trajectory():
    """The executor starts the first common probe of a trajectory and holds its siblings until one has
    finished (it writes the trajectory to the cache), running other tasks meanwhile: two workers no longer
    both train the same trajectory. An exclusive task is never jumped over."""
    from types import SimpleNamespace

    from bench.run.executors import LocalExecutor, trajectory_key

    tasks = expand(make_grid(load_preset("default"), {"labels": [100], "seeds": [0]}))
    common = [t for t in tasks if t["kind"] == "common"]
    cells = [t for t in tasks if t["kind"] == "train"]
    ex = LocalExecutor(workers=2)
    queue = [*common, *cells]
    assert ex._next(queue, set()) == 0
    ex.running = {common[0]["id"]: SimpleNamespace(spec=common[0])}
    queue = queue[1:]
    assert queue[ex._next(queue, set())]["kind"] == "train"  # the siblings wait, a cell runs
    key = trajectory_key(common[0])
    assert ex._next(queue, {key}) == 0  # once the trajectory is cached, the siblings may run side by side
    timing = next(t for t in tasks if t.get("exclusive"))
    assert ex._next([common[1], timing, *cells], set()) is None  # blocked sibling, then an exclusive task


def test_times_are_compared_only_when_measured_alone_on_one_machine():
    """Issue 25: a probe added later on another CPU, or run beside other work, has no place in a product or a
    ratio of times: the work-normalised MSE and the time per epoch read the majority machine's isolated rows."""
    from bench.analysis.paired import isolated_epoch_ms

    rows = TIMING.assign(device="cpu", device_name="Intel", other_cpu_load=0.0)
    other = pd.DataFrame([{"estimator": "rb-topk", "aux": a, "step_kind": k, "median_ms": 1.0, "device": "cpu",
                           "device_name": "AMD", "other_cpu_load": 0.0} for a in (False, True) for k in ("unsup", "sup")])
    busy = rows[rows.estimator == "gumbel"].assign(median_ms=1.0, other_cpu_load=1.0)
    mixed = pd.concat([rows[rows.estimator != "rb-topk"], other, busy, rows[rows.estimator == "gumbel"]])
    assert set(D.isolated_timing(mixed).device_name) == {"Intel"}
    sec = D.seconds_per_step(mixed)
    assert "rb-topk" not in sec and sec["gumbel"] == pytest.approx(0.010)  # the contended 1 ms row is not read
    t = D.efficiency_table(GRAD, mixed).set_index("estimator")
    assert pd.isna(t.loc["rb-topk", D.EFFICIENCY]) and t.loc["enum", D.EFFICIENCY] == pytest.approx(2.0 * 0.1)
    ms = isolated_epoch_ms(mixed.assign(batch_size=100), labels=3000, aux=False)
    assert set(ms.index) == {"trace", "enum", "gumbel"}
    # the same rows with rb-topk timed on the majority's machine: it is back
    assert "rb-topk" in D.seconds_per_step(rows)
