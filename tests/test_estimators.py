"""The estimators compute what they claim: exact sums and unbiased gradients."""
import math
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Bernoulli, Normal

from ssvae.estimators import REGISTRY, get_estimator
from ssvae.errors import ConfigError

from .gradcheck import (MAX_ABS_Z, MEAN_Z2_MAX, describe, discrepancy, encoder_y_grads, group_grads, particles,
                        perturbed)


def hand_written_enum_elbo(ss, xs):
    """sum_b [ sum_y q(y|x_b) ELBO(x_b, y) + H(q(.|x_b)) ], with one z per (y, b), drawn as Pyro draws it."""
    q_logits = ss.encoder_y(xs)
    log_q_y = torch.log_softmax(q_logits, -1)  # (B, 10)
    ys = torch.eye(10)[:, None, :]  # (10, 1, 10)
    loc, scale = ss.encoder_z([xs, ys])  # (10, B, z)
    z = Normal(loc, scale).rsample()  # the only random draw: same RNG call as the guide's z site
    log_p_z = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_q_z = Normal(loc, scale).log_prob(z).sum(-1)
    log_p_x = Bernoulli(logits=ss.decoder([z, ys.expand(10, xs.shape[0], 10)])).log_prob(xs).sum(-1)
    per_label = log_p_x + math.log(0.1) + log_p_z - log_q_z  # (10, B)
    q_y = log_q_y.exp().T  # (10, B)
    entropy = -(log_q_y.exp() * log_q_y).sum(-1)  # (B,)
    return ((q_y * per_label).sum(0) + entropy).sum()


def test_enumerated_elbo_equals_hand_written_sum(tiny_model, tiny_batch):
    obj = get_estimator("enum").build(tiny_model, {})
    pyro.set_rng_seed(7)
    pyro_loss = obj.loss.loss(obj.model, obj.guide, tiny_batch)
    pyro.set_rng_seed(7)
    with torch.no_grad():
        elbo = hand_written_enum_elbo(tiny_model, tiny_batch).item()
    assert pyro_loss == pytest.approx(-elbo, rel=1e-5, abs=1e-4)
    # and it is not a coincidence of the noise: another draw gives another value
    pyro.set_rng_seed(8)
    assert obj.loss.loss(obj.model, obj.guide, tiny_batch) != pytest.approx(pyro_loss, rel=1e-6)


def test_supervised_elbo_is_single_label_term(tiny_model, tiny_batch):
    """With y observed, every estimator computes the same supervised ELBO."""
    ys = torch.nn.functional.one_hot(torch.arange(5) % 10, 10).float()
    losses = []
    for name in ("trace", "enum", "enum-seq"):
        obj = get_estimator(name).build(tiny_model, {})
        pyro.set_rng_seed(11)
        losses.append(obj.loss.loss(obj.model, obj.guide, tiny_batch, ys))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert losses[0] == pytest.approx(losses[2], rel=1e-6)


def test_trace_gradient_is_unbiased_for_enum_gradient(tiny_model, tiny_batch):
    """Mean of many score-function gradients of encoder_y = the enumerated gradient (within noise)."""
    pyro.set_rng_seed(0)
    # each draw averages 200 vectorised particles, so draws are near-normal; 150 draws
    trace = encoder_y_grads(particles(tiny_model, 200), tiny_model, tiny_batch, 150)
    enum = encoder_y_grads(get_estimator("enum").build(tiny_model, {}), tiny_model, tiny_batch, 150)
    z = discrepancy(trace, enum)
    assert trace.abs().mean() > 0 and enum.abs().mean() > 0
    assert z.pow(2).mean() < MEAN_Z2_MAX, describe(z)
    assert z.abs().max() < MAX_ABS_Z, describe(z)


def test_unbiasedness_check_detects_a_biased_estimator(tiny_model, tiny_batch):
    """The same check fails for a wrong gradient: y drawn from a shifted q (the ELBO of another guide)."""
    pyro.set_rng_seed(0)
    shift = torch.zeros(10)
    shift[0] = 2.0

    def biased_guide(xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            ys = pyro.sample("y", dist.OneHotCategorical(logits=tiny_model.encoder_y(xs) + shift))
            loc, scale = tiny_model.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    wrong = encoder_y_grads(particles(tiny_model, 200, biased_guide), tiny_model, tiny_batch, 150)
    enum = encoder_y_grads(get_estimator("enum").build(tiny_model, {}), tiny_model, tiny_batch, 150)
    z = discrepancy(wrong, enum)
    assert z.pow(2).mean() > MEAN_Z2_MAX or z.abs().max() > MAX_ABS_Z


def test_sequential_and_parallel_enumeration_agree_in_expectation(tiny_model, tiny_batch):
    pyro.set_rng_seed(0)
    seq = encoder_y_grads(get_estimator("enum-seq").build(tiny_model, {}), tiny_model, tiny_batch, 200)
    par = encoder_y_grads(get_estimator("enum").build(tiny_model, {}), tiny_model, tiny_batch, 200)
    z = discrepancy(seq, par)
    assert z.pow(2).mean() < MEAN_Z2_MAX and z.abs().max() < MAX_ABS_Z


def test_enum_has_lower_encoder_y_variance_than_trace(tiny_model, tiny_batch):
    pyro.set_rng_seed(0)
    trace = encoder_y_grads(get_estimator("trace").build(tiny_model, {}), tiny_model, tiny_batch, 100)
    enum = encoder_y_grads(get_estimator("enum").build(tiny_model, {}), tiny_model, tiny_batch, 100)
    assert trace.var(0).mean() > 10 * enum.var(0).mean()


def test_registry_names_each_estimator_once_and_rejects_unknown():
    assert {"trace", "enum", "enum-seq", "baseline"} <= set(REGISTRY)
    for name, est in REGISTRY.items():
        assert est.name == name and est.description
    with pytest.raises(ConfigError, match="unknown estimator 'nope'"):
        get_estimator("nope")


def test_baseline_objective_is_cross_entropy(tiny_model, tiny_batch):
    ys = torch.nn.functional.one_hot(torch.arange(5) % 10, 10).float()
    obj = get_estimator("baseline").build(tiny_model, {})
    loss = obj.loss.loss(obj.model, obj.guide, tiny_batch, ys)
    expected = torch.nn.functional.cross_entropy(tiny_model.encoder_y(tiny_batch), ys.argmax(-1), reduction="sum")
    assert loss == pytest.approx(expected.item(), rel=1e-5)


# -- unbiasedness in every parameter group, away from the initialisation ------------------------

@pytest.mark.parametrize("name, replicas", [("trace", 100), ("trace-avg", 100), ("trace-bx", 100),
                                            ("trace-k10", 10), ("rb-topk", 30), ("enum-seq", 1)])
def test_gradient_is_unbiased_in_every_group_on_perturbed_parameters(tiny_model, tiny_batch, name, replicas):
    """At Pyro's init q(y|x) is the same for every input; perturbed, it is not, and the mean gradient
    of every group (classifier, z-encoder, decoder) must still be the enumerated one."""
    model = perturbed(tiny_model)
    pyro.set_rng_seed(0)
    obj = get_estimator(name).build(model, {})
    if name == "trace-avg":  # a warm average, as in training (restored after every draw)
        for _ in range(20):
            obj.loss_and_grads(tiny_batch.repeat(replicas, 1))
        model.zero_grad(set_to_none=True)
    if name == "trace-bx":  # a baseline that depends on x: unbiased for any b(x)
        with torch.no_grad():
            for p in obj.baseline.parameters():
                p.normal_(0.0, 1.0)
    est = group_grads(obj, model, tiny_batch, 120, replicas=replicas)
    enum = group_grads(get_estimator("enum").build(model, {}), model, tiny_batch, 300)
    assert set(est) == set(enum) == {"encoder_y", "encoder_z", "decoder"}
    for g in enum:
        keep = (est[g].var(0) > 0) | (enum[g].var(0) > 0)
        z = discrepancy(est[g], enum[g])[keep]
        assert est[g].abs().mean() > 0
        assert z.pow(2).mean() < MEAN_Z2_MAX and z.abs().max() < MAX_ABS_Z, f"{name} {g}: {describe(z)}"


def test_perturbed_check_detects_a_biased_decoder_gradient(tiny_model, tiny_batch):
    """Negative control for the check above in a group other than encoder_y: gumbel at tau = 1."""
    model = perturbed(tiny_model)
    pyro.set_rng_seed(0)
    obj = get_estimator("gumbel").build(model, {})
    est = group_grads(obj, model, tiny_batch, 120, replicas=30)
    enum = group_grads(get_estimator("enum").build(model, {}), model, tiny_batch, 300)
    z = discrepancy(est["decoder"], enum["decoder"])
    assert z.pow(2).mean() > MEAN_Z2_MAX or z.abs().max() > MAX_ABS_Z


# -- rb-topk by hand, k < 10 ------------------------------------------------------------------

def test_rb_topk_matches_a_hand_computation_with_k3(tiny_model, tiny_batch):
    """k = 3: the loss and every gradient equal the surrogate of ssvae/rb.py written out by hand,
    with the same tail draw and the same z noise (same seed, same torch calls)."""
    model = perturbed(tiny_model)
    xs = tiny_batch
    obj = get_estimator("rb-topk").build(model, {"k": 3})
    pyro.set_rng_seed(21)
    loss = obj.loss_and_grads(xs)
    pyro_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    pyro.set_rng_seed(21)
    log_q = torch.log_softmax(model.encoder_y(xs), -1)  # (B, 10)
    with torch.no_grad():
        top = log_q.topk(3, -1).indices.sort(-1).values  # (B, 3)
        rest = log_q.detach().scatter(-1, top, float("-inf"))
        draw = torch.distributions.Categorical(logits=rest).sample()  # the tail draw (B,)
    assert not (top == draw[:, None]).any()
    idx = torch.cat([top, draw[:, None]], -1)  # (B, 4)
    ys = torch.nn.functional.one_hot(idx.T, 10).float()  # (4, B, 10)
    loc, scale = model.encoder_z([xs, ys])
    z = Normal(loc, scale).rsample()  # the z noise: one call, as the guide's z site
    f = (Bernoulli(logits=model.decoder([z, ys])).log_prob(xs).sum(-1) + math.log(0.1)
         + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(loc, scale).log_prob(z).sum(-1)
         - log_q.gather(-1, idx).T)  # f(y) per slot (4, B)
    q_slots = log_q.gather(-1, idx).T.exp()  # (4, B)
    q_top = q_slots[:3].sum(0)
    tail_w = 1 - q_top
    elbo = (q_slots[:3] * f[:3]).sum(0) + tail_w * f[3]
    b = (q_slots[:3] * f[:3]).sum(0).detach() / q_top.detach()
    log_q_rest = log_q.gather(-1, draw[:, None]).squeeze(-1) - torch.log(tail_w)
    score = tail_w.detach() * (f[3].detach() - b) * log_q_rest
    surrogate = (elbo + score - score.detach()).sum()
    (-surrogate).backward()
    assert loss == pytest.approx(-elbo.sum().item(), rel=1e-5)
    for (name, p), g in zip(model.named_parameters(), pyro_grads):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5 * (p.grad.abs().max().item() + 1e-12),
                                   msg=lambda m: f"{name}: {m}")


# -- stateful baselines: their values, and the variance they remove ---------------------------------

def test_decaying_average_values(tiny_model, tiny_batch):
    """avg_t = beta * mean(avg_{t-1}) + (1 - beta) * cost_t per example, beta = 0.95; cost_t is what a
    first update from zero stores divided by 1 - beta (same seed: same cost)."""
    name = "__baseline_avg_downstream_cost_y"
    store = pyro.get_param_store()
    obj = get_estimator("trace-avg").build(tiny_model, {})
    costs = []
    for seed in (1, 2):  # each step's cost, from a fresh average
        store.clear()
        pyro.set_rng_seed(seed)
        obj.loss_and_grads(tiny_batch)
        costs.append(store[name].detach().clone() / 0.05)
    assert costs[0].shape == (5,) and not torch.allclose(costs[0], costs[1])
    store.clear()
    pyro.set_rng_seed(1)
    obj.loss_and_grads(tiny_batch)
    torch.testing.assert_close(store[name].detach(), 0.05 * costs[0])
    pyro.set_rng_seed(2)
    obj.loss_and_grads(tiny_batch)
    expected = 0.95 * (0.05 * costs[0]).mean() + 0.05 * costs[1]
    torch.testing.assert_close(store[name].detach(), expected)
    # the cost is the per-example negative ELBO's downstream part: of the order of the loss
    assert costs[0].mean().abs() > 1.0


def _encoder_y_variance(obj, model, xs, n=150):
    return encoder_y_grads(obj, model, xs, n).var(0).mean().item()


def test_trained_decaying_average_lowers_the_variance(tiny_model, tiny_batch):
    model = perturbed(tiny_model)
    obj = get_estimator("trace-avg").build(model, {})
    pyro.set_rng_seed(0)
    cold = _encoder_y_variance(obj, model, tiny_batch)  # every draw from the empty average: plain trace
    for _ in range(100):
        obj.loss_and_grads(tiny_batch)
    model.zero_grad(set_to_none=True)
    warm = _encoder_y_variance(obj, model, tiny_batch)
    assert warm < 0.5 * cold, (warm, cold)


def test_trained_neural_baseline_lowers_the_variance(tiny_model, tiny_batch):
    """b(x) trained by the common probe's baseline trainer (bench.run.gradient_probe) against an untrained b(x)."""
    from bench.run.gradient_probe import _BaselineTrainer

    model = perturbed(tiny_model, scale=0.2)  # costs of tens of nats: a scale Adam at lr 0.05 reaches
    pyro.set_rng_seed(0)
    obj = get_estimator("trace-bx").build(model, {"hidden": 16})
    untrained = _encoder_y_variance(obj, model, tiny_batch)
    trainer = _BaselineTrainer({"trace-bx": obj}, SimpleNamespace(lr=0.05, beta1=0.9), tiny_batch,
                               model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(300):
        trainer("unsup", tiny_batch, step)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the networks did not move
    trained = _encoder_y_variance(obj, model, tiny_batch)
    assert trained < 0.5 * untrained, (trained, untrained)
