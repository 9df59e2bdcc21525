"""NVIL (Mnih & Gregor 2014, "Neural Variational Inference and Learning in Belief Networks")
for one discrete guide site.

With ``f(y) = E_{q(z|x,y)}[log p(x, y, z) - log q(z|x,y)] - log q(y|x)`` the learning signal
of a draw y ~ q(y|x) (as in :mod:`ssvae.rb`; z stays reparameterised), NVIL's three variance
reductions of the score-function term ``f(y) grad log q(y|x)`` are, per mini-batch of B:

* an input-dependent baseline C(x) (an MLP ``input -> hidden -> 1``), giving ``l = f(y) - C(x)``;
* centring: c, a running mean of l over mini-batches, ``c <- alpha c + (1 - alpha) mean_b(l)``;
* variance normalisation: v, a running mean of the mini-batch variance of l,
  ``v <- alpha v + (1 - alpha) var_b(l)``, and the centred signal divided by ``s = max(1, sqrt(v))``.

The gradients (per example, ascent directions; paper's Algorithm 1)::

    encoder_y:            grad f(y) + (l - c) / s * grad log q(y|x)
    encoder_z, decoder:   grad f(y)                       (reparameterised z)
    baseline C:           (l - c) / s * grad C(x)         = -grad of (f(y) - c - C(x))^2 / (2 s)

The baseline is trained by its own optimiser settings: ``baseline_lr`` (the run's learning
rate when not given) reaches the trainer as ``Objective.lr_by_module``.

Bias, stated exactly. C(x) and c do not depend on the draw y, so centring leaves the
gradient unbiased. Dividing the score term by s scales the *expected* encoder_y gradient by
1/s (f's own ``-log q(y|x)`` term has mean zero, so all of encoder_y's expected gradient is
in the score term): an adaptive step size for q(y|x), as in the paper, where every gradient
of the inference network is a score term. encoder_z and the decoder are unbiased; with
s = 1 (v <= 1) so is encoder_y. The tests check both statements.

Two choices the paper leaves open, made here so that the estimator stays as stated: c and v
are used *before* they absorb the current mini-batch (the paper updates them first, which
lets each example's own signal into its baseline, weight (1 - alpha)/B), and they start
from the first unlabeled mini-batch's mean and variance (the paper starts from 0; an
SS-VAE's signal is several hundred nats, and a zero start would make the first score terms
hundreds of times too large). alpha = 0.8 and 100 hidden units are the paper's.

State: c and v live in Pyro's param store (``<name>_signal_stats``, never optimised), so a
measurement probe that restores the store restores them; ``update_stats = False`` freezes them.
"""
from __future__ import annotations

import pyro
import torch
from torch import nn

from .rb import LabelStackELBO


class NVIL(LabelStackELBO):
    """One score-function sample of a one-hot guide site with NVIL's baseline, centring and scaling."""

    label = "nvil"

    def __init__(self, baseline: nn.Module, alpha: float = 0.8, name: str = "nvil_baseline",
                 site: str = "y", max_plate_nesting: int = 1):
        super().__init__(site=site, max_plate_nesting=max_plate_nesting)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"NVIL's alpha must be in [0, 1) (got {alpha})")
        self.baseline = baseline
        self.alpha = float(alpha)
        self.name = name
        self.update_stats = True

    @property
    def stats_name(self) -> str:
        return f"{self.name}_signal_stats"

    def signal_stats(self):
        """(c, v), or ``None`` before the first unlabeled mini-batch."""
        store = pyro.get_param_store()
        if self.stats_name not in store:
            return None
        c, v = store[self.stats_name].detach()
        return c, v

    def set_signal_stats(self, c, v) -> None:
        pyro.get_param_store()[self.stats_name] = torch.stack([torch.as_tensor(c), torch.as_tensor(v)]).float()

    def _elbo_and_surrogate(self, model, guide, args, kwargs):
        fn, trace = self._site_dist(guide, args, kwargs)
        if fn is None:  # labeled batch: y observed, nothing to estimate
            elbo = self._plain_elbo(model, trace, args, kwargs)
            return elbo, elbo
        pyro.module(self.name, self.baseline)  # so that SVI's optimiser trains C(x)
        with torch.no_grad():
            logits = fn.logits.detach()  # (B, K)
            draw = torch.distributions.Categorical(logits=logits).sample()  # (B,)
            values = torch.nn.functional.one_hot(draw, logits.shape[-1]).to(logits.dtype)[None]  # (1, B, K)
        f, q = self._per_label_elbo(model, guide, values, args, kwargs)
        f = f[0]  # (B,)
        log_q = q.logits.gather(-1, draw[:, None]).squeeze(-1)  # (B,)
        b = self.baseline(args[0])  # (B,)
        l = f.detach() - b.detach()
        stats = self.signal_stats()
        if stats is None:
            c, v = l.mean(), l.var(unbiased=False) if l.numel() > 1 else torch.zeros((), dtype=l.dtype)
            if self.update_stats:
                self.set_signal_stats(c, v)
        else:
            c, v = (t.to(l.device, l.dtype) for t in stats)
            if self.update_stats:
                var_b = l.var(unbiased=False) if l.numel() > 1 else torch.zeros_like(v)
                a = self.alpha
                self.set_signal_stats(a * c + (1 - a) * l.mean(), a * v + (1 - a) * var_b)
        s = v.sqrt().clamp(min=1.0)
        signal = (l - c) / s
        score = (signal * log_q).sum()
        fit = ((f.detach() - c - b) ** 2).sum() / (2 * s)  # the baseline's regression loss
        elbo = f.sum()
        return elbo, elbo + (score - score.detach()) - (fit - fit.detach())
