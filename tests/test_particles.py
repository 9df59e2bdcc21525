"""Batched gradient draws (``ssvae.particles``) are the loop's draws: the same numbers where the noise
can be the same, the same distribution everywhere, the loop where they do not apply, nothing left behind."""
from types import SimpleNamespace

import numpy as np
import pyro
import pytest
import torch
from scipy import stats
from torch.nn.modules import module as torch_module

from bench.run import gradient_probe
from bench.core.errors import ConfigError
from bench.run.grid import check_fields
from ssvae import particles
from ssvae.estimators import REGISTRY, Objective, get_estimator
from ssvae.metrics import draw_gradients

SUPPORTED = ("trace", "enum", "enum-seq", "trace-k10", "enum-k10", "gumbel", "gumbel-st", "baseline")
UNSUPPORTED = ("nvil", "trace-avg", "rb-topk", "rloo")


@pytest.fixture
def batch16():
    """16 images and labels: 16 x z_dim (3) normal draws are 48, a multiple of torch's 16-number blocks,
    so n draws of z at once are the numbers of n draws one after the other."""
    g = torch.Generator().manual_seed(4)
    xs = (torch.rand(16, 12, generator=g) > 0.5).float()
    return xs, torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()


def _args(batch, kind):
    return batch[:1] if kind == "unsup" else batch


def _both(obj, groups, args, n, seed=5):
    """(loop draws, batched draws), each from the same torch seed, in float64."""
    out = []
    for batched in (False, True):
        torch.manual_seed(seed)
        out.append(draw_gradients(obj, groups, args, n, dtype=torch.float64, batched=batched))
    return out


def _assert_same(loop, batched):
    assert sorted(loop) == sorted(batched)
    for g in loop:
        torch.testing.assert_close(batched[g], loop[g], rtol=1e-5, atol=1e-6 * float(loop[g].abs().max()))


@pytest.mark.parametrize("kind", ["unsup", "sup"])
@pytest.mark.parametrize("est", SUPPORTED)
def test_one_batched_draw_is_one_loop_draw(tiny_model, batch16, est, kind):
    """Under one seed a batched draw takes the loop's noise: the same gradient to float rounding
    (trace-k10: its 10 particles in one plate, averaged as loss_and_grads does)."""
    obj = get_estimator(est).build(tiny_model, {})
    _assert_same(*_both(obj, tiny_model.param_groups(), _args(batch16, kind), 1))


@pytest.mark.parametrize("est", ["trace", "enum", "trace-k10", "gumbel"])
def test_batched_draws_of_a_labeled_batch_are_the_loops(tiny_model, batch16, est):
    """A labeled batch draws z alone: n draws at once take the numbers of n draws one after the other,
    so every batched draw (chunks of 1 and 5 draws, each scaled back from the loss's 1/num_particles)
    equals the loop's."""
    obj = get_estimator(est).build(tiny_model, {})
    loop, batched = _both(obj, tiny_model.param_groups(), batch16, 6)
    _assert_same(loop, batched)
    assert not torch.allclose(loop["decoder"][0], loop["decoder"][1])  # six draws, not one six times


def test_chunks_follow_the_memory_budget(tiny_model, tiny_batch):
    obj = get_estimator("enum").build(tiny_model, {})
    groups = tiny_model.param_groups()
    big = [size for size, _ in particles.draw_chunks(obj, groups, (tiny_batch,), 7)]
    small = [size for size, chunk in particles.draw_chunks(obj, groups, (tiny_batch,), 7, budget_mb=1e-6)]
    assert big == [1, 6] and small == [1] * 7


def _same_distribution(loop: torch.Tensor, batched: torch.Tensor, alpha: float = 1e-3):
    """Per coordinate, Welch's t (means) and Brown-Forsythe (variances); Bonferroni over the coordinates
    (valid whatever their correlation): the smallest p-value times P above ``alpha``."""
    a, b = loop.numpy(), batched.numpy()
    varies = (a.std(0) > 0) | (b.std(0) > 0)
    np.testing.assert_allclose(a[:, ~varies].mean(0), b[:, ~varies].mean(0), rtol=1e-5, atol=1e-8)
    a, b = a[:, varies], b[:, varies]
    p_mean = stats.ttest_ind(a, b, equal_var=False, axis=0).pvalue
    p_var = stats.levene(a, b, center="median", axis=0).pvalue
    p = a.shape[1]
    return min(p_mean.min() * p, 1.0), min(p_var.min() * p, 1.0)


@pytest.mark.parametrize("kind", ["unsup", "sup"])
@pytest.mark.parametrize("est", ["trace", "enum", "gumbel", "trace-k10"])
def test_batched_draws_have_the_loops_distribution(tiny_model, tiny_batch, est, kind):
    """Independent loop and batched draws (other seeds, other noise): per group, every coordinate's
    mean and variance agree (a scale forgotten, particles shared or summed instead of averaged fail)."""
    obj = get_estimator(est).build(tiny_model, {})
    groups = tiny_model.param_groups()
    ys = torch.nn.functional.one_hot(torch.arange(5) % 10, 10).float()
    args = (tiny_batch,) if kind == "unsup" else (tiny_batch, ys)
    torch.manual_seed(11)
    loop = draw_gradients(obj, groups, args, 300, dtype=torch.float64)
    torch.manual_seed(12)
    batched = draw_gradients(obj, groups, args, 300, dtype=torch.float64, batched=True)
    assert sorted(loop) == sorted(batched) and len(loop) == (3 if kind == "unsup" else 2)
    for g in loop:
        p_mean, p_var = _same_distribution(loop[g], batched[g])
        assert p_mean > 1e-3 and p_var > 1e-3, (g, p_mean, p_var)


def test_supported_estimators_are_the_exact_pyro_losses(tiny_model):
    """Trace_ELBO and TraceEnum_ELBO themselves, and no estimator whose baseline learns between draws."""
    supported = {name for name, est in REGISTRY.items() if particles.supports(est.build(tiny_model, {}))}
    assert supported == set(SUPPORTED)
    assert not supported & {name for name, est in REGISTRY.items() if est.stateful}


@pytest.mark.parametrize("est", UNSUPPORTED)
def test_unsupported_estimators_keep_the_loop(tiny_model, tiny_batch, est):
    obj = get_estimator(est).build(tiny_model, {})
    assert not particles.supports(obj)
    loop, batched = _both(obj, tiny_model.param_groups(), (tiny_batch,), 3)
    assert sorted(loop) == sorted(batched)
    for g in loop:
        assert torch.equal(loop[g], batched[g]), g
    with pytest.raises(ValueError, match="do not support"):
        next(particles.draw_chunks(obj, tiny_model.param_groups(), (tiny_batch,), 3))


def _state(model):
    store = pyro.get_param_store()
    return (sorted(store.keys()), {k: v.detach().clone() for k, v in store.items()},
            list(torch_module._global_forward_hooks), [p.grad for p in model.parameters()])


def _assert_restored(model, before):
    names, values, hooks, grads = _state(model)
    assert names == before[0] and hooks == before[2]
    assert all(torch.equal(values[k], before[1][k]) for k in names)
    assert all(g is None for g in grads)


@pytest.mark.parametrize("fail", [False, True])
def test_batched_draws_leave_nothing_behind(tiny_model, tiny_batch, fail):
    """Hooks removed, param store as it was (no parameter registered by the draws), no ``.grad``:
    after the draws and after a loss that raises half-way."""
    obj = get_estimator("trace").build(tiny_model, {})
    pyro.get_param_store().get_param("kept", torch.ones(2))
    before = _state(tiny_model)

    def model(xs, ys=None):
        tiny_model.model(xs, ys)
        if fail:
            raise RuntimeError("boom")

    obj = Objective(model, obj.guide, obj.loss)
    if fail:
        with pytest.raises(RuntimeError, match="boom"):
            draw_gradients(obj, tiny_model.param_groups(), (tiny_batch,), 4, batched=True)
    else:
        assert draw_gradients(obj, tiny_model.param_groups(), (tiny_batch,), 4, batched=True)
    _assert_restored(tiny_model, before)


def test_the_probe_setting_reaches_the_draws(monkeypatch, tiny_model, tiny_batch):
    """``probe.draws`` is "loop" or "batched" (anything else: a one-line error); the variance rows pass it on."""
    assert check_fields({"probe": {"draws": "batched"}})["probe"]["draws"] == "batched"
    with pytest.raises(ConfigError, match="probe.draws must be one of loop, batched"):
        check_fields({"probe": {"draws": "vectorised"}})
    seen = []

    def report(*args, batched=False, **kwargs):
        seen.append(batched)
        return {}

    monkeypatch.setattr(gradient_probe, "gradient_report", report)
    trainer = SimpleNamespace(ss=tiny_model)
    obj = get_estimator("trace").build(tiny_model, {})
    for draws in ("loop", "batched"):
        gradient_probe._variance_rows(obj, trainer, {"unsup": (tiny_batch,)}, 4, draws=draws)
    gradient_probe._variance_rows(obj, trainer, {"unsup": (tiny_batch,)}, 4)
    assert seen == [False, True, False]
