"""The added estimators: baselines, particles, relaxations, Rao-Blackwellisation.

For each: (a) the unbiased ones give an encoder_y gradient whose mean matches the
enumerated gradient (z-scores, see gradcheck.py); (b) an exact check of its loss on a tiny
net; (c) the relaxations' bias, stated on a small case; (d) the temperature schedule; and
every estimator takes a few real training steps, with and without the auxiliary loss.
"""
import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from ssvae.config import RunConfig
from ssvae.errors import ConfigError
from ssvae.estimators import REGISTRY, get_estimator
from ssvae.relax import TemperatureSchedule
from ssvae.train import Trainer, train

from .gradcheck import describe, discrepancy, encoder_y_grads, looks_unbiased

NEW = ("trace-avg", "trace-bx", "trace-k10", "gumbel", "gumbel-st", "rb-topk", "rb-top3", "rb-topk-plain",
       "rloo", "nvil")


def labels_for(xs):
    return torch.nn.functional.one_hot(torch.arange(xs.shape[0]) % 10, 10).float()


def enum_grads(model, xs, n=150):
    return encoder_y_grads(get_estimator("enum").build(model, {}), model, xs, n)


# -- (a) unbiasedness of the encoder_y gradient ----------------------------------------------

@pytest.mark.parametrize("name, options, replicas", [
    ("trace-avg", {}, 200),
    ("trace-bx", {}, 200),
    ("trace-k10", {}, 20),  # 10 vectorised particles x 20 copies = 200 samples per image
    ("enum-k10", {}, 20),   # y summed out, 10 z draws each: unbiased like enum, with less z noise
    ("rb-topk", {}, 40),
    ("rb-topk", {"k": 3}, 40),
    ("rb-topk", {"baseline": False}, 40),
])
def test_gradient_is_unbiased_for_enum_gradient(tiny_model, tiny_batch, name, options, replicas):
    pyro.set_rng_seed(0)
    obj = get_estimator(name).build(tiny_model, options)
    if name == "trace-bx":  # a baseline that really depends on x: unbiased for any b(x)
        with torch.no_grad():
            for p in obj.baseline.parameters():
                p.normal_(0.0, 1.0)
    est = encoder_y_grads(obj, tiny_model, tiny_batch, 150, replicas=replicas)
    z = discrepancy(est, enum_grads(tiny_model, tiny_batch))
    assert est.abs().mean() > 0
    assert looks_unbiased(z), describe(z)


# -- (b) exact checks of the losses ------------------------------------------------------

def test_rb_topk_with_all_labels_is_the_enumerated_elbo(tiny_model, tiny_batch):
    """k = 10: nothing sampled; same value and gradient as TraceEnum_ELBO under the same seed."""
    rb = get_estimator("rb-topk").build(tiny_model, {"k": 10})
    enum = get_estimator("enum").build(tiny_model, {})
    grads = []
    for obj in (rb, enum):
        pyro.set_rng_seed(7)
        loss = obj.loss_and_grads(tiny_batch)
        grads.append((loss, [p.grad.clone() for p in tiny_model.parameters()]))
        tiny_model.zero_grad(set_to_none=True)
    (l_rb, g_rb), (l_enum, g_enum) = grads
    assert l_rb == pytest.approx(l_enum, rel=1e-5)
    for a, b in zip(g_rb, g_enum):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_rb_topk_loss_is_unbiased_for_the_elbo(tiny_model, tiny_batch):
    """k = 1: the mean of many loss draws (one tail label each) matches the enumerated loss."""
    pyro.set_rng_seed(0)
    xs = tiny_batch.repeat(40, 1)
    with torch.no_grad():
        draws = {}
        for name, opts in (("rb-topk", {"k": 1}), ("enum", {})):
            obj = get_estimator(name).build(tiny_model, opts)
            draws[name] = torch.tensor([obj.loss.loss(obj.model, obj.guide, xs) / 40 for _ in range(100)])
    rb, enum = draws["rb-topk"], draws["enum"]
    se = math.sqrt(rb.var() / len(rb) + enum.var() / len(enum))
    assert abs(rb.mean() - enum.mean()) < 4 * se, (rb.mean(), enum.mean(), se)
    assert rb.std() > 0  # it is random: the tail draw and z


@pytest.mark.parametrize("name", NEW)
def test_labeled_batch_gives_the_supervised_elbo(tiny_model, tiny_batch, name):
    """y observed: every estimator computes Trace_ELBO's supervised ELBO (same seed, same value)."""
    ys = labels_for(tiny_batch)
    obj = get_estimator(name).build(tiny_model, {"k": 1} if name == "trace-k10" else {})
    pyro.set_rng_seed(11)
    loss = obj.loss.loss(obj.model, obj.guide, tiny_batch, ys)
    pyro.set_rng_seed(11)
    expected = Trace_ELBO(max_plate_nesting=1).loss(tiny_model.model, tiny_model.guide, tiny_batch, ys)
    assert math.isfinite(loss) and loss == pytest.approx(expected, rel=1e-6)


def test_trace_k10_is_the_mean_of_ten_single_particle_elbos(tiny_model, tiny_batch):
    """10 vectorised particles draw exactly what one particle draws on the batch repeated 10 times."""
    obj = get_estimator("trace-k10").build(tiny_model, {})
    pyro.set_rng_seed(4)
    k10 = obj.loss.loss(obj.model, obj.guide, tiny_batch)
    pyro.set_rng_seed(4)
    single = Trace_ELBO(max_plate_nesting=1).loss(tiny_model.model, tiny_model.guide, tiny_batch.repeat(10, 1))
    assert k10 == pytest.approx(single / 10, rel=1e-5)
    assert get_estimator("trace-k10").build(tiny_model, {"k": 3}).loss.num_particles == 3


@pytest.mark.parametrize("name", ["trace-avg", "trace-bx"])
def test_baselines_change_the_gradient_not_the_loss(tiny_model, tiny_batch, name):
    """A baseline only reduces variance: loss = plain score-function loss, under the same noise."""
    trace = get_estimator("trace").build(tiny_model, {})
    obj = get_estimator(name).build(tiny_model, {})
    for _ in range(3):  # the decaying average is 0 at the first step, nonzero after
        obj.loss_and_grads(tiny_batch)
    pyro.set_rng_seed(5)
    expected = trace.loss.loss(trace.model, trace.guide, tiny_batch)
    pyro.set_rng_seed(5)
    assert obj.loss_and_grads(tiny_batch) == pytest.approx(expected, rel=1e-6)
    g_base = tiny_model.encoder_y.out.weight.grad.clone()
    tiny_model.zero_grad(set_to_none=True)
    pyro.set_rng_seed(5)
    trace.loss_and_grads(tiny_batch)
    assert not torch.allclose(g_base, tiny_model.encoder_y.out.weight.grad)


def test_decaying_average_is_one_scalar_across_batch_sizes(tiny_model, tiny_batch):
    """Pyro keeps it per plate position; pooled to the batch mean, batches of any size work."""
    obj = get_estimator("trace-avg").build(tiny_model, {})
    obj.loss_and_grads(tiny_batch)  # stores 0.05 * per-example downstream cost, shape (5,)
    first = pyro.get_param_store()["__baseline_avg_downstream_cost_y"].detach().clone()
    obj.loss_and_grads(tiny_batch[:3])  # a smaller last batch of an epoch
    avg = pyro.get_param_store()["__baseline_avg_downstream_cost_y"].detach()
    assert first.shape == (5,) and avg.shape == (3,)
    obj.loss_and_grads(tiny_batch)
    # before this step the stored average was pooled: the same for every position
    assert pyro.get_param_store()["__baseline_avg_downstream_cost_y"].shape == (5,)


def test_nvil_baseline_is_trained_by_svi_and_is_not_an_ssvae_group(synthetic_data):
    cfg = RunConfig(estimator="trace-bx", labels=100, epochs=1, batch_size=32, hidden=(8,), z_dim=3)
    trainer = Trainer(cfg, synthetic_data)
    baseline = trainer.main.baseline
    before = [p.detach().clone() for p in baseline.parameters()]
    for kind, xs, ys in trainer.batches(["unsup", "unsup"]):
        trainer.step(kind, xs, ys)
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, baseline.parameters()))
    ss_params = {id(p) for ps in trainer.ss.param_groups().values() for p in ps}
    assert not any(id(p) in ss_params for p in baseline.parameters())
    assert any(name.startswith("nvil_baseline$$$") for name in pyro.get_param_store().keys())


@pytest.mark.parametrize("name", ["trace-avg", "trace-bx", "nvil"])
def test_gradient_probe_leaves_the_training_state_alone(tiny_model, tiny_batch, name):
    """Probes draw gradients between steps: the running average and b(x)'s .grad must not leak."""
    obj = get_estimator(name).build(tiny_model, {})
    obj.loss_and_grads(tiny_batch)
    tiny_model.zero_grad(set_to_none=True)
    for p in getattr(obj, "baseline", tiny_model).parameters():
        p.grad = None
    store = pyro.get_param_store()
    before = {k: v.detach().clone() for k, v in store.named_parameters()}
    encoder_y_grads(obj, tiny_model, tiny_batch, 3)
    after = dict(store.named_parameters())
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k].detach()) and after[k].grad is None for k in before)


def test_options_are_checked():
    from ssvae.model import SSVAE
    ss = SSVAE(input_size=12, z_dim=3, hidden=(8,))
    with pytest.raises(ConfigError, match="no option"):
        get_estimator("rb-topk").build(ss, {"kk": 2})
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        get_estimator("rb-topk").build(ss, {"k": 0})
    assert not REGISTRY["gumbel"].unbiased and not REGISTRY["gumbel-st"].unbiased
    assert all(REGISTRY[n].unbiased for n in ("trace-avg", "trace-bx", "trace-k10", "rb-topk", "rb-top3",
                                              "rb-topk-plain", "rloo"))
    assert not REGISTRY["nvil"].unbiased  # its variance normalisation rescales encoder_y's gradient by 1/s
    assert all("\n" not in REGISTRY[n].description for n in NEW)


# -- (c) the relaxations' bias --------------------------------------------------------------

def _relaxed_bias(model, xs, name, tau, replicas=400, draws=20):
    """(E[relaxed loss] - E[enum loss], standard error), per batch, from ``draws`` draws each."""
    enum = get_estimator("enum").build(model, {})
    obj = get_estimator(name).build(model, {})
    obj.relax.temperature = tau
    big = xs.repeat(replicas, 1)
    with torch.no_grad():
        e = torch.tensor([enum.loss.loss(enum.model, enum.guide, big) / replicas for _ in range(draws)])
        r = torch.tensor([obj.loss.loss(obj.model, obj.guide, big) / replicas for _ in range(draws)])
    assert torch.isfinite(r).all()
    return (r.mean() - e.mean()).item(), math.sqrt(r.var() / draws + e.var() / draws)


@pytest.fixture
def label_sensitive_model(tiny_model):
    """The tiny model with an N(0, 1) decoder (so x depends on y) and q(y|x) = p(y) = uniform."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in tiny_model.decoder.parameters():
            p.normal_(0.0, 1.0)
        tiny_model.encoder_y.out.weight.zero_()
        tiny_model.encoder_y.out.bias.zero_()
    return tiny_model


def test_gumbel_bias_comes_from_soft_labels_and_vanishes_as_tau_goes_to_zero(label_sensitive_model, tiny_batch):
    """With q(y|x) = p(y) the y terms of both ELBOs vanish; the decoder seeing a soft label is
    the whole bias: several nats at tau = 1, within noise at tau = 0.02."""
    pyro.set_rng_seed(0)
    bias_1, se_1 = _relaxed_bias(label_sensitive_model, tiny_batch, "gumbel", 1.0)
    bias_0, se_0 = _relaxed_bias(label_sensitive_model, tiny_batch, "gumbel", 0.02)
    assert abs(bias_1) > 6 * se_1 and abs(bias_1) > 2.0, (bias_1, se_1)
    assert abs(bias_0) < 4 * se_0 and abs(bias_0) < abs(bias_1) / 5, (bias_0, se_0)


def test_gumbel_st_forward_value_is_exact_when_q_is_the_prior(label_sensitive_model, tiny_batch):
    """Straight-through: hard labels forward (an exact sample of q) and, with q = p, relaxed y
    terms that cancel: the loss is unbiased for the discrete ELBO even at tau = 1."""
    pyro.set_rng_seed(0)
    bias, se = _relaxed_bias(label_sensitive_model, tiny_batch, "gumbel-st", 1.0)
    assert abs(bias) < 4 * se, (bias, se)


@pytest.mark.parametrize("name", ["gumbel", "gumbel-st"])
def test_relaxation_gradient_is_biased(label_sensitive_model, tiny_batch, name):
    """With a mildly non-uniform classifier the relaxed encoder_y gradient, at the schedule's
    floor tau = 0.5, fails the check the unbiased estimators pass (hence unbiased=False)."""
    pyro.set_rng_seed(0)
    with torch.no_grad():
        label_sensitive_model.encoder_y.out.weight.normal_(0.0, 0.3)
        label_sensitive_model.encoder_y.out.bias.normal_(0.0, 0.3)
    obj = get_estimator(name).build(label_sensitive_model, {})
    obj.relax.temperature = 0.5
    relaxed = encoder_y_grads(obj, label_sensitive_model, tiny_batch, 60, replicas=20)
    z = discrepancy(relaxed, enum_grads(label_sensitive_model, tiny_batch, 60))
    assert z.pow(2).mean() > 10 and not looks_unbiased(z), describe(z)


def test_relaxed_kl_differs_from_the_discrete_kl_for_a_confident_classifier(label_sensitive_model, tiny_batch):
    """With q(y|x) far from the uniform prior, the relaxed densities' y term is not the discrete
    KL: at the schedule's floor tau = 0.5 the relaxed loss is off by many nats per image."""
    pyro.set_rng_seed(0)
    with torch.no_grad():
        for p in label_sensitive_model.encoder_y.parameters():
            p.normal_(0.0, 1.0)
    bias, se = _relaxed_bias(label_sensitive_model, tiny_batch, "gumbel", 0.5)
    assert abs(bias) > 10 * se and abs(bias) / tiny_batch.shape[0] > 5.0, (bias, se)


# -- (d) the temperature schedule ------------------------------------------------------------

def test_temperature_schedule_values():
    s = TemperatureSchedule()  # Jang et al.: max(0.5, exp(-3e-5 t)), updated every 2000 steps
    assert s(0) == 1.0
    assert s(1999) == 1.0
    assert s(2000) == pytest.approx(math.exp(-0.06))
    assert s(3999) == pytest.approx(math.exp(-0.06))
    assert s(40000) == 0.5  # exp(-1.2) = 0.30 is below the floor
    assert s(10 ** 6) == 0.5
    assert TemperatureSchedule(tau_min=0.1)(40000) == pytest.approx(math.exp(-1.2))


def test_trainer_sets_the_temperature_of_each_step(synthetic_data):
    cfg = RunConfig(estimator="gumbel", labels=100, epochs=1, batch_size=32, hidden=(8,), z_dim=3,
                    steps_per_epoch=5, options={"every": 2, "rate": 0.1, "tau_min": 0.05})
    seen = []
    result = train(cfg, synthetic_data, on_step=lambda tr, step: seen.append(tr.main.relax.temperature))
    schedule = result.trainer.main.schedule
    assert result.trainer.main.relax.temperature == schedule(4)  # the last step taken was step 4
    # the probe before step t sees the temperature of step t - 1
    assert seen[1:] == [schedule(t) for t in range(5)]
    assert schedule(4) < schedule(2) < schedule(1) == 1.0


# -- every estimator trains ------------------------------------------------------------------

@pytest.mark.parametrize("aux", [False, True])
@pytest.mark.parametrize("name", NEW)
def test_estimator_trains_without_nan(synthetic_data, name, aux):
    # 4 labeled + 13 unlabeled batches of 32 (the last one smaller): the whole epoch
    cfg = RunConfig(estimator=name, aux=aux, labels=100, epochs=1, batch_size=32, hidden=(8,), z_dim=3)
    result = train(cfg, synthetic_data)
    row = result.curves[-1]
    assert result.metrics["steps"] == 17
    assert math.isfinite(row["loss_sup"]) and math.isfinite(row["loss_unsup"])
    assert (row["loss_aux"] > 0) == aux
    assert all(torch.isfinite(p).all() for p in result.trainer.ss.parameters())


@pytest.mark.parametrize("name", ["trace", "enum"])
def test_nan_parameter_is_a_divergence_not_a_crash(synthetic_data, name):
    """A NaN parameter trips Pyro's distribution checks before any loss is NaN: still `diverged`."""
    from ssvae.errors import DivergedError

    cfg = RunConfig(estimator=name, labels=100, epochs=1, batch_size=32, hidden=(8,), z_dim=3, steps_per_epoch=5)

    def poison(trainer, step):
        if step == 2:
            with torch.no_grad():
                next(iter(trainer.ss.parameters())).fill_(float("nan"))

    with pytest.raises(DivergedError) as info:
        train(cfg, synthetic_data, on_step=poison)
    assert info.value.step == 2 and "nan" in str(info.value)


def test_an_argument_out_of_its_support_after_a_step_is_a_divergence(synthetic_data):
    """Finite parameters whose outputs leave a distribution's support (a scale exp(...) that underflowed to 0
    after a step too large: enum + aux at lr 4e-2 in the search) diverge, as a NaN does; at step 0, before any
    step, the same error is a bug and is raised as it is."""
    from ssvae.errors import DivergedError

    cfg = RunConfig(estimator="enum", labels=100, epochs=1, batch_size=32, hidden=(8,), z_dim=3, steps_per_epoch=5)

    def zero_scale(at):
        def hook(trainer, step):
            if step == at:
                with torch.no_grad():  # the encoder's log-scale head: exp(-1e4) underflows to 0, finitely
                    head = [p for n, p in trainer.ss.named_parameters() if "encoder_z" in n][-1]
                    head.fill_(-1e4)
        return hook

    with pytest.raises(DivergedError) as info:
        train(cfg, synthetic_data, on_step=zero_scale(2))
    assert info.value.step == 2
    assert "parameter scale of Normal left its support GreaterThan(lower_bound=0.0) at step 2" in str(info.value)
    with pytest.raises(ValueError) as first:
        train(cfg, synthetic_data, on_step=zero_scale(0))
    assert not isinstance(first.value, DivergedError)
