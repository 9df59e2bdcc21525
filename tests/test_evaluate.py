"""The common objective: the enumerated test ELBO and the importance-weighted bound (ssvae.evaluate)."""
import math

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch.distributions import Bernoulli, Normal, kl_divergence

from ssvae import evaluate
from ssvae.data import Split
from ssvae.model import SSVAE


def _hand_elbo(ss, xs, eps):
    """sum_y q(y|x) [log p(x|y,z_y) - KL(q(z|x,y)||N(0,I)) + log 1/10 - log q(y|x)], one image and label at a time."""
    out = []
    for b in range(xs.shape[0]):
        x = xs[b]
        q = torch.softmax(ss.encoder_y(x), -1)
        total = 0.0
        for c in range(10):
            y = torch.nn.functional.one_hot(torch.tensor(c), 10).float()
            loc, scale = ss.encoder_z([x, y])
            recs = []
            for s in range(eps.shape[0]):
                z = loc + scale * eps[s, c, b]
                recs.append(Bernoulli(logits=ss.decoder([z, y]), validate_args=False).log_prob(x).sum())
            rec = torch.stack(recs).mean()
            kl = kl_divergence(Normal(loc, scale), Normal(torch.zeros_like(loc), torch.ones_like(scale))).sum()
            total = total + q[c] * (rec - kl + math.log(0.1) - torch.log(q[c]))
        out.append(total)
    return torch.stack(out)


def test_elbo_matches_hand_enumeration(tiny_model, tiny_batch):
    with torch.no_grad():
        eps = torch.randn((2, 10, 5, 3), generator=torch.Generator().manual_seed(7))
        ours = evaluate.elbo_per_image(tiny_model, tiny_batch, torch.Generator().manual_seed(7), z_samples=2)
        hand = _hand_elbo(tiny_model, tiny_batch, eps)
    assert ours.shape == (5,)
    assert torch.allclose(ours, hand, rtol=1e-5, atol=1e-5), (ours, hand)


def test_elbo_is_the_expectation_of_pyros_enumerated_elbo(tiny_model, tiny_batch):
    """Many z draws: our ELBO equals minus Pyro's TraceEnum_ELBO loss (same model, y summed by Pyro)."""
    ss = tiny_model.double()
    xs = tiny_batch.double()
    ours = evaluate.elbo_per_image(ss, xs, torch.Generator().manual_seed(1), z_samples=20000).sum().item()
    elbo = TraceEnum_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        pyros = -elbo.loss(ss.model, config_enumerate(ss.guide, "parallel"), xs)
    # Pyro's estimate samples z (and so the KL term): its standard error here is about 0.05 nats
    assert ours == pytest.approx(pyros, abs=0.3)
    # and not the labeled ELBO, nor the ELBO without the entropy of q(y|x)
    log_qy = torch.log_softmax(ss.encoder_y(xs), -1)
    entropy = -(log_qy.exp() * log_qy).sum().item()
    assert abs(ours - entropy - pyros) > 1.0 or entropy < 1.0


def _scrambled(z_dim=1, input_size=6, seed=4):
    """A tiny model whose decoder (N(0, 1) weights) depends strongly on z, with a guide q(z|x,y) = N(0.8, 1)
    that ignores x and y: far from the posterior, yet a proposal that covers it."""
    pyro.set_rng_seed(seed)
    ss = SSVAE(input_size=input_size, z_dim=z_dim, hidden=(8,)).double()
    with torch.no_grad():
        for p in list(ss.decoder.parameters()) + list(ss.encoder_y.parameters()):
            p.normal_(0.0, 1.0)
        for p in ss.encoder_z.parameters():
            p.zero_()
        ss.encoder_z.loc.bias.fill_(0.8)
    return ss


def _log_px_quadrature(ss, xs, grid=40001, half_width=12.0):
    """log p(x) = log sum_y 1/10 int N(z; 0, 1) p(x|y,z) dz on a fine grid (z is one-dimensional)."""
    z = torch.linspace(-half_width, half_width, grid, dtype=torch.float64)
    dz = z[1] - z[0]
    out = []
    with torch.no_grad():
        for x in xs:
            per_y = []
            for c in range(10):
                y = torch.nn.functional.one_hot(torch.tensor(c), 10).double().expand(grid, 10)
                lp = Bernoulli(logits=ss.decoder([z[:, None], y]), validate_args=False).log_prob(x).sum(-1)
                lp = lp + Normal(0.0, 1.0).log_prob(z)
                per_y.append(torch.logsumexp(lp, 0) + dz.log())
            out.append(torch.logsumexp(torch.stack(per_y), 0) - math.log(10))
    return torch.stack(out)


def test_iwae_bound_lies_between_the_elbo_and_log_px():
    ss = _scrambled()
    xs = (torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    log_px = _log_px_quadrature(ss, xs)
    reps = 200
    big = xs.repeat(reps, 1)
    elbo = evaluate.elbo_per_image(ss, big, torch.Generator().manual_seed(1)).reshape(reps, 4)
    iwae = evaluate.iwae_per_image(ss, big, 100, torch.Generator().manual_seed(2)).reshape(reps, 4)
    tight = evaluate.iwae_per_image(ss, xs.repeat(10, 1), 20000, torch.Generator().manual_seed(3)).reshape(10, 4)
    se = iwae.std(0) / reps ** 0.5
    gap = log_px - elbo.mean(0)
    assert (gap > 0.5).all(), gap  # a guide far from the posterior: a loose ELBO (else the test says nothing)
    assert (iwae.mean(0) <= log_px + 3 * se).all(), (iwae.mean(0), log_px, se)
    assert (iwae.mean(0) > elbo.mean(0) + 0.25 * gap).all(), (iwae.mean(0), elbo.mean(0), log_px)
    # with many samples the bound reaches log p(x): the weights are those of the model's joint density
    assert torch.allclose(tight.mean(0), log_px, atol=0.02), (tight.mean(0), log_px)


def test_split_means_are_deterministic_and_leave_the_training_rng_alone(tiny_model, monkeypatch):
    g = torch.Generator().manual_seed(5)
    split = Split((torch.rand(37, 12, generator=g) > 0.5).float(), torch.eye(10)[torch.arange(37) % 10])
    monkeypatch.setattr(evaluate, "CHUNK_ROWS", 100)  # 10 images per chunk: several chunks, a partial one
    state = torch.get_rng_state()
    a = evaluate.mean_elbo(tiny_model, split)
    b = evaluate.mean_elbo(tiny_model, split)
    w = evaluate.mean_iwae(tiny_model, split, k=5, images=20)
    assert torch.equal(state, torch.get_rng_state())
    assert a == b and math.isfinite(a) and a < 0
    assert math.isfinite(w)
    # the chunked mean is the mean of the per-image values of its chunks
    g2 = evaluate._generator("cpu")
    per = torch.cat([evaluate.elbo_per_image(tiny_model, split.x[i:i + 10], g2) for i in range(0, 37, 10)])
    assert a == pytest.approx(per.mean().item(), rel=1e-6)
    with pytest.raises(ValueError):
        evaluate.mean_iwae(tiny_model, split, k=0)
