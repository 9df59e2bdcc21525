"""Shared machinery for checking that a gradient estimator is unbiased.

Draw many gradient estimates of the encoder_y parameters (the classifier q(y|x), where
discrete-latent estimators differ) and compare their mean with that of the enumerated
gradient coordinate by coordinate: z-scores of the difference of the two sample means.
An unbiased estimator gives z-scores that look standard normal (mean square near 1, no
extreme coordinate); a biased one fails (see the negative control in test_estimators.py).

Averaging particles makes each draw near-normal, which the z-score test needs. For
estimators whose particles cannot be vectorised (TraceGraph_ELBO baselines, rb-topk), the
batch is replicated ``replicas`` times: every copy of an image gets its own independent
sample, and the gradient of the replicated batch divided by ``replicas`` is an average of
``replicas`` independent single-particle estimates, with the same expectation.
"""
import torch
from pyro.infer import Trace_ELBO

from ssvae.estimators import Objective
from ssvae.metrics import gradient_samples, mean_and_stderr

#: thresholds on the z-scores of the encoder_y coordinates (the classifier has ~100 of them)
MEAN_Z2_MAX = 1.6
MAX_ABS_Z = 5.5


def encoder_y_grads(objective, model, xs, n, replicas=1):
    """(n, P) gradient draws of ``model.encoder_y``; the batch replicated ``replicas`` times."""
    groups = {"encoder_y": list(model.encoder_y.parameters())}
    xs = xs.repeat(replicas, 1) if replicas > 1 else xs
    return gradient_samples(objective, groups, (xs,), n)["encoder_y"] / replicas


def discrepancy(a, b):
    """Per-coordinate z-scores of the difference of two sample means."""
    ma, sa = mean_and_stderr(a)
    mb, sb = mean_and_stderr(b)
    return (ma - mb) / torch.sqrt(sa ** 2 + sb ** 2 + 1e-30)


def looks_unbiased(z):
    return z.pow(2).mean().item() < MEAN_Z2_MAX and z.abs().max().item() < MAX_ABS_Z


def describe(z):
    return f"mean z^2 {z.pow(2).mean():.2f}, max |z| {z.abs().max():.2f}"


def particles(model, n_particles, guide=None):
    """Trace_ELBO with ``n_particles`` vectorised particles (score function for y)."""
    return Objective(model.model, guide or model.guide,
                     Trace_ELBO(num_particles=n_particles, vectorize_particles=True, max_plate_nesting=1))


def perturbed(model, scale=0.5, seed=4):
    """``model`` with every parameter moved by ``scale`` x N(0, 1) noise: q(y|x) then differs from
    input to input and every term of the gradient matters (at Pyro's init it is nearly uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def group_grads(objective, model, xs, n, replicas=1):
    """(n, P) gradient draws of every parameter group; the batch replicated ``replicas`` times."""
    xs = xs.repeat(replicas, 1) if replicas > 1 else xs
    return {g: s / replicas for g, s in gradient_samples(objective, model.param_groups(), (xs,), n).items()}
