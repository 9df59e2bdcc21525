"""REINFORCE with k samples and the leave-one-out baseline (RLOO) for one discrete guide site.

Kool, van Hoof and Welling, "Buy 4 REINFORCE samples, get a baseline for free!" (ICLR 2019
workshop). For each example, with q = q(y|x) and the per-label ELBO
``f(y) = E_{q(z|x,y)}[log p(x, y, z) - log q(z|x,y)] - log q(y|x)`` (as in :mod:`ssvae.rb`),
draw y_1, ..., y_k ~ q independently (k >= 2) and use::

    ELBO(x)   ~  (1/k) sum_i f(y_i)
    gradient  =  (1/k) sum_i [ grad f(y_i) + (f(y_i) - b_i) grad log q(y_i) ],
    b_i       =  (1/(k-1)) sum_{j != i} f(y_j)

b_i is independent of y_i (it uses only the other draws), so E[(f(y_i) - b_i) grad log q(y_i)]
= E[f(y_i) grad log q(y_i)]: the estimator is unbiased, and the baseline costs no extra pass.
``grad f(y_i)`` carries the reparameterised z gradient (decoder, encoder_z) and the
gradient of f's own ``-log q(y|x)`` term (mean zero). The surrogate (per example)::

    (1/k) sum_i [ f(y_i) + stop_grad(f(y_i) - b_i) * log q(y_i) ]

With k = 10 the unlabeled step makes as many decoder passes as enumeration over the 10
labels (the comparison ``trace-k10`` makes without the baseline). Labeled batches (y
observed) have nothing to estimate: one reparameterised guide run, as every estimator.

The k draws are evaluated in one vectorised pass: the guide and model are run with the site
conditioned on the stack ``(k, batch, K)`` of one-hot draws (see :class:`ssvae.rb.LabelStackELBO`).
"""
from __future__ import annotations

import torch

from .rb import LabelStackELBO


class LeaveOneOut(LabelStackELBO):
    """k score-function samples of a one-hot guide site, each baselined by the mean of the others."""

    label = "rloo"

    def __init__(self, k: int = 10, site: str = "y", max_plate_nesting: int = 1):
        super().__init__(site=site, max_plate_nesting=max_plate_nesting)
        if int(k) != k or k < 2:
            raise ValueError(f"RLOO needs k >= 2 samples (got {k})")
        self.k = int(k)

    def _elbo_and_surrogate(self, model, guide, args, kwargs):
        fn, trace = self._site_dist(guide, args, kwargs)
        if fn is None:  # labeled batch: y observed, nothing to estimate
            elbo = self._plain_elbo(model, trace, args, kwargs)
            return elbo, elbo
        with torch.no_grad():
            logits = fn.logits.detach()  # (B, K)
            draws = torch.distributions.Categorical(logits=logits).sample((self.k,))  # (k, B)
            values = torch.nn.functional.one_hot(draws, logits.shape[-1]).to(logits.dtype)  # (k, B, K)
        f, q = self._per_label_elbo(model, guide, values, args, kwargs)  # (k, B)
        log_q = q.logits.gather(-1, draws.T).T  # (k, B): log q(y_i | x), differentiable
        fd = f.detach()
        loo = (fd.sum(0, keepdim=True) - fd) / (self.k - 1)  # b_i, the mean of the other draws
        elbo = f.mean(0).sum()
        score = ((fd - loo) * log_q).mean(0).sum()
        return elbo, elbo + score - score.detach()
