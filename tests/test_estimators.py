"""The estimators compute what they claim: exact sums and unbiased gradients."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import Bernoulli, Normal

from ssvae.estimators import REGISTRY, get_estimator
from ssvae.errors import ConfigError

from .gradcheck import MAX_ABS_Z, MEAN_Z2_MAX, describe, discrepancy, encoder_y_grads, particles


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
