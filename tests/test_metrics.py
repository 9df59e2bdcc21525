"""The gradient diagnostics measure what they claim: known distributions, the exact reference,
i.i.d. draws, and baselines trained along the common trajectory without changing it."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyro
import pytest
import torch

from bench.analysis import diagnostics
from bench.core import schema
from bench.run.gradient_probe import _BaselineTrainer, _stateful_baseline
from bench.report import data as report_data
from ssvae import RunConfig, statistics
from ssvae.estimators import get_estimator
from ssvae.metrics import (draw_gradients, gradient_samples, gradient_stats, preserved_param_store,
                           reference_gradient, reference_objective)
from ssvae.train import train

from .gradcheck import perturbed


def _gaussian(seed, n=400, p=30, mu=None):
    """n draws of N(mu, S) with correlated coordinates; returns draws, mu, S."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(p, p, generator=torch.Generator().manual_seed(99)) / math.sqrt(p)
    cov = a @ a.T + torch.diag(torch.linspace(0.2, 2.0, p))
    mu = torch.randn(p, generator=torch.Generator().manual_seed(98)) if mu is None else mu
    x = mu + torch.randn(n, p, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov.double()).T
    return x, mu.double(), cov.double()


def test_gradient_stats_intervals_cover_the_known_values():
    """Variance, bias², MSE, debiased SNR and cosine of a Gaussian with known mean and covariance:
    the 95 % bootstrap intervals cover the true values in most of 20 independent samples."""
    shift = torch.linspace(-0.5, 0.5, 30).double()
    cover = {k: 0 for k in ("variance", "bias_sq", "mse", "snr", "cosine")}
    for seed in range(20):
        x, mu, cov = _gaussian(seed)
        r = mu + shift
        true_var = cov.diagonal().mean().item()
        true = {"variance": true_var, "bias_sq": shift.pow(2).mean().item(),
                "mse": shift.pow(2).mean().item() + true_var, "snr": mu.pow(2).mean().item() / true_var,
                "cosine": (mu @ r / (mu.norm() * r.norm())).item()}
        s = gradient_stats(x.float(), r, 0.0, n_boot=400, seed=seed)
        for k in cover:
            cover[k] += s[f"{k}_lo"] <= true[k] <= s[f"{k}_hi"]
    assert all(c >= 15 for c in cover.values()), cover


def test_debiased_signal_and_bias_have_no_floor():
    """At mean zero the squared sample mean sits at variance/n; the debiased signal does not, and
    an unbiased estimator's bias² averages to zero (a formula without the correction fails both)."""
    signal, mean_sq, bias, var_n = [], [], [], []
    for seed in range(30):
        x, _, cov = _gaussian(seed, n=50, mu=torch.zeros(30))
        s = gradient_stats(x, torch.zeros(30), 0.0, n_boot=10)
        signal.append(s["signal"])
        mean_sq.append(s["mean_sq"])
        bias.append(s["bias_sq"])
        var_n.append(s["variance"] / 50)
    se = np.std(signal) / math.sqrt(30)
    assert abs(np.mean(signal)) < 3 * se
    assert np.mean(mean_sq) > np.mean(var_n) * 0.8 and np.mean(mean_sq) > 5 * se
    assert abs(np.mean(bias)) < 3 * np.std(bias) / math.sqrt(30)


def test_reference_error_is_subtracted_from_the_bias():
    """A noisy reference (M draws) inflates |m - r|² by its own error; ref_err takes it back out."""
    bias = []
    for seed in range(30):
        x, mu, cov = _gaussian(seed, n=100)
        g = torch.Generator().manual_seed(1000 + seed)
        ref_draws = mu + torch.randn(20, 30, generator=g, dtype=torch.float64) * 3.0
        r = ref_draws.mean(0)
        ref_err = ref_draws.var(0).mean().item() / 20
        bias.append(gradient_stats(x, r, ref_err, n_boot=10)["bias_sq"])
    # the uncorrected value would be about 9/20 = 0.45 per coordinate
    assert abs(np.mean(bias)) < 3 * np.std(bias) / math.sqrt(30) and abs(np.mean(bias)) < 0.1


def test_reference_gradient_is_the_enumerated_gradient_with_its_stated_error(tiny_model, tiny_batch):
    model = perturbed(tiny_model)
    groups = model.param_groups()
    for args in [(tiny_batch,), (tiny_batch, torch.nn.functional.one_hot(torch.arange(5) % 10, 10).float())]:
        pyro.set_rng_seed(0)
        ref = reference_gradient(reference_objective(model, 10), groups, args, calls=100, particles=10)
        assert ref.draws == 1000
        enum = gradient_samples(get_estimator("enum").build(model, {}), groups, args, 1500)
        for g, r in ref.mean.items():
            var = enum[g].var(0)
            keep = var > 0
            z = ((r - enum[g].mean(0)) / torch.sqrt(var / 1000 + var / 1500))[keep]
            # the coordinates are strongly correlated (a few images drive them all): loose bounds
            assert z.pow(2).mean() < 4 and z.abs().max() < 6, (g, z.pow(2).mean(), z.abs().max())
            # its error is that of the mean of 1000 enumerated draws
            assert 0.4 < ref.err[g] / (var.mean().item() / 1000) < 2.5, g


def test_draws_start_from_the_same_state(tiny_model, tiny_batch):
    """Each draw of a stateful estimator sees the state the probe found (the average is restored)."""
    obj = get_estimator("trace-avg").build(tiny_model, {})
    for _ in range(3):
        obj.loss_and_grads(tiny_batch)
    tiny_model.zero_grad(set_to_none=True)
    groups = {"encoder_y": list(tiny_model.encoder_y.parameters())}
    store = pyro.get_param_store()
    avg = store["__baseline_avg_downstream_cost_y"].detach().clone()
    pyro.set_rng_seed(3)
    draws = draw_gradients(obj, groups, (tiny_batch,), 2, dtype=torch.float64)["encoder_y"]
    assert torch.equal(store["__baseline_avg_downstream_cost_y"].detach(), avg)
    pyro.set_rng_seed(3)
    by_hand = []
    for _ in range(2):  # the second draw from the restored average, not from the first draw's update
        with preserved_param_store():
            obj.loss_and_grads(tiny_batch)
            by_hand.append(torch.cat([p.grad.reshape(-1) for p in groups["encoder_y"]]).double())
    torch.testing.assert_close(draws[0], by_hand[0])
    torch.testing.assert_close(draws[1], by_hand[1])
    # without the restore the second draw differs (the average moved): the check can fail
    pyro.set_rng_seed(3)
    obj.loss_and_grads(tiny_batch)
    tiny_model.zero_grad(set_to_none=True)
    obj.loss_and_grads(tiny_batch)
    moved = torch.cat([p.grad.reshape(-1) for p in groups["encoder_y"]]).double()
    assert not torch.allclose(moved, by_hand[1])


def test_stateful_baselines_are_detected(tiny_model, tiny_batch):
    objs = {name: get_estimator(name).build(tiny_model, {"baseline_lr": 0.003} if name == "nvil" else {})
            for name in ("trace", "enum", "trace-avg", "trace-bx", "nvil", "rb-topk", "rloo", "gumbel")}
    kinds = {name: _stateful_baseline(obj, tiny_batch) for name, obj in objs.items()}
    assert kinds["trace-avg"] == ("avg", None, None) and kinds["trace-bx"][:1] == ("nn",)
    assert kinds["nvil"] == ("nn", objs["nvil"].baseline, 0.003)  # C(x), at its own learning rate
    assert all(kinds[n] is None for n in ("trace", "enum", "rb-topk", "rloo", "gumbel"))


def test_the_registry_says_which_estimators_keep_a_learning_baseline(tiny_model, tiny_batch):
    """Estimator.stateful (read by the cost estimates and the trajectory cache) is what the probe finds."""
    from ssvae.estimators import REGISTRY

    for name, est in REGISTRY.items():
        if est.kind == "ssvae":
            found = _stateful_baseline(est.build(tiny_model, {}), tiny_batch) is not None
            assert est.stateful == found, name


def test_baselines_trained_along_the_common_trajectory_leave_it_unchanged(synthetic_data):
    """The common probe's baseline updates do not move the enum + aux run: same parameters after
    training with and without them; and the baselines did learn (b(x) moved, the average exists)."""
    cfg = RunConfig(estimator="enum", aux=True, labels=100, epochs=1, batch_size=32, hidden=(8,), z_dim=3,
                    steps_per_epoch=6)
    plain = train(cfg, synthetic_data).trainer
    plain_params = [p.detach().clone() for p in plain.ss.parameters()]
    state = {}

    def on_step(trainer, step):
        if not state:
            objs = {n: get_estimator(n).build(trainer.ss, {}) for n in ("trace-avg", "trace-bx", "nvil", "trace")}
            state["b"] = _BaselineTrainer(objs, cfg, synthetic_data.unsup.x[:32], trainer.ss.parameters())
            state["before"] = {n: [p.detach().clone() for p in objs[n].baseline.parameters()]
                               for n in ("trace-bx", "nvil")}
            state["objs"] = objs
            state["b"].install(trainer)

    probed = train(cfg, synthetic_data, on_step=on_step).trainer
    for a, b in zip(plain_params, probed.ss.parameters()):
        assert torch.equal(a, b.detach())
    assert state["b"].updates == 5  # the unlabeled steps of the epoch (one labeled)
    assert [n for n, _, _ in state["b"].items] == ["trace-avg", "trace-bx", "nvil"]
    for n, before in state["before"].items():
        moved = [not torch.equal(a, b.detach()) for a, b in zip(before, state["objs"][n].baseline.parameters())]
        assert all(moved), n
    assert "__baseline_avg_downstream_cost_y" in pyro.get_param_store()
    assert state["objs"]["nvil"].loss.signal_stats() is not None  # NVIL's c and v moved with it


def test_common_probe_rows_carry_the_statistics(synthetic_data, monkeypatch, tmp_path):
    """run_common end to end on a tiny net: every estimator, group and step kind, the reference,
    intervals, the relaxation's temperature of its own run, the baselines' updates."""
    from bench.run import gradient_probe

    monkeypatch.setattr(gradient_probe, "_load_data", lambda cfg, data_dir: synthetic_data)
    cfg = RunConfig(estimator="enum", aux=True, labels=100, epochs=1, batch_size=32, hidden=(8,), z_dim=3,
                    steps_per_epoch=6)
    spec = {"kind": "common", "id": "c", "config": cfg.to_dict(), "estimators": ["trace", "trace-avg", "gumbel"],
            "checkpoints": [0, 6], "n_samples": 6, "reference_draws": 4, "bootstrap": 20,
            "own_options": {"gumbel": {"rate": 0.5, "every": 1, "tau_min": 0.2}}}
    out = gradient_probe.run_common(spec, None)
    assert out["status"] == "ok", out.get("error")
    rows = out["grad_variance"]
    assert {(r["estimator"], r["step"], r["step_kind"]) for r in rows} == {
        (e, s, k) for e in spec["estimators"] for s in (0, 6) for k in ("sup", "unsup")}
    unsup_y = {(r["estimator"], r["step"]): r for r in rows if r["param_group"] == "encoder_y"}
    assert unsup_y[("gumbel", 0)]["temperature"] == 1.0
    assert unsup_y[("gumbel", 6)]["temperature"] == pytest.approx(max(0.2, math.exp(-3.0)))
    assert unsup_y[("trace", 6)]["baseline_updates"] == 5 and unsup_y[("trace", 0)]["baseline_updates"] == 0
    for r in rows:
        assert r["n_samples"] == 6 and r["ref_draws"] >= 4 and r["ref_err"] >= 0
        assert r["mse_lo"] <= r["mse_hi"] and r["variance_lo"] <= r["variance"] * 1.0000001 or r["variance"] == 0
        assert r["mse"] == pytest.approx(r["bias_sq"] + r["variance"])


def test_sibling_common_probes_share_the_trajectory_through_the_cache(synthetic_data, monkeypatch, tmp_path):
    """The first probe of a (labels, seed) trains the trajectory and writes its parameters and references;
    a probe of a stateless estimator then reads them and gives the very rows it would have computed; a
    stateful one still trains (its baseline must learn along the way) and reads only the references."""
    from bench.run import gradient_probe

    monkeypatch.setattr(gradient_probe, "_load_data", lambda cfg, data_dir: synthetic_data)
    cfg = RunConfig(estimator="enum", aux=True, labels=100, epochs=1, batch_size=32, hidden=(8,), z_dim=3,
                    steps_per_epoch=6)
    base = {"kind": "common", "config": cfg.to_dict(), "checkpoints": [0, 3, 6], "n_samples": 5,
            "reference_draws": 4, "bootstrap": 20}
    gumbel = {**base, "id": "g", "estimators": ["gumbel"], "own_options": {"gumbel": {"rate": 0.5, "every": 1}}}
    avg = {**base, "id": "a", "estimators": ["trace-avg"]}
    cache = tmp_path / "cache"
    alone = gradient_probe.run_common(gumbel, None)  # no cache at all
    first = gradient_probe.run_common(avg, None, cache_dir=cache)
    assert first["trajectory_cache"] == "trained" and len(list(cache.rglob("step*.pt"))) == 3
    read = gradient_probe.run_common(gumbel, None, cache_dir=cache)
    assert read["trajectory_cache"] == "read"
    assert read["grad_variance"] == alone["grad_variance"]  # to the last bit
    again = gradient_probe.run_common(avg, None, cache_dir=cache)
    assert again["trajectory_cache"] == "trained" and again["grad_variance"] == first["grad_variance"]
    other = {**gumbel, "config": {**cfg.to_dict(), "lr": cfg.lr * 2}}  # another trajectory: another key
    assert gradient_probe.run_common(other, None, cache_dir=cache)["trajectory_cache"] == "trained"
    assert len(list(cache.rglob("step*.pt"))) == 6


def test_each_statistic_is_one_record_that_the_columns_and_tables_follow():
    """ssvae.statistics is the statistics' one home: gradient_stats returns exactly its columns, the CSV
    schema and the report's numeric columns are those columns, and the gradient tables show the records
    marked for them in their order (a new statistic: its record and its test, nothing else)."""
    draws = torch.randn(12, 40, generator=torch.Generator().manual_seed(1))
    ref = torch.randn(40, generator=torch.Generator().manual_seed(2))
    for reference in (None, ref):
        out = gradient_stats(draws, reference, n_boot=50)
        assert set(out) == set(statistics.COLUMNS)
        for stat in statistics.STATISTICS:
            assert np.isnan(out[stat.name]) == (stat.reference and reference is None), stat.name
            assert (f"{stat.name}_lo" in out) == stat.interval
    cols = schema.VARIANCE_COLUMNS
    assert cols[cols.index("n_samples"):cols.index("n_samples") + len(statistics.COLUMNS)] == list(statistics.COLUMNS)
    assert set(statistics.COLUMNS) <= set(report_data.GRAD_NUMERIC)
    assert diagnostics.STATS == statistics.TABLE_STATS
    assert all(statistics.BY_NAME[s].better in ("lower", "higher") for s in statistics.TABLE_STATS)
    rows = [{"labels": 100, "seed": s, "trajectory": "common", "step": 5, "param_group": "encoder_y",
             "step_kind": "unsup", "estimator": e, **gradient_stats(draws + s, ref, n_boot=20)}
            for s in (0, 1) for e in ("trace", "enum")]
    table = diagnostics.mse_table(pd.DataFrame(rows))
    shown = [c for c in table.columns if c in statistics.BY_NAME]
    assert shown == list(statistics.TABLE_STATS)
