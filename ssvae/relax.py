"""Gumbel-softmax (Concrete) relaxations of the label y, applied with a poutine.

:class:`RelaxLatent` is a Pyro messenger that, at every *latent* sample site named ``y``
(the guide's q(y|x) and the model's prior p(y), which the ELBO replays from the guide),
swaps the one-hot categorical for a relaxed one with the same logits and a shared
temperature. Model and guide stay the single definitions of :mod:`ssvae.model`.

* ``straight_through=False``: ``RelaxedOneHotCategorical``: the decoder and encoder_z see
  the soft sample; the ELBO is that of the continuous relaxed model (biased for the
  discrete ELBO; the bias shrinks as the temperature goes to 0, where the gradient
  variance grows).
* ``straight_through=True``: ``RelaxedOneHotCategoricalStraightThrough``: the forward pass
  uses the hard one-hot argmax (an exact sample of q(y|x)); the backward pass uses the
  gradient of the soft sample; log-densities are those of the soft sample.

Labeled batches: an observed y keeps the exact ``OneHotCategorical`` (the relaxed density
of an exact one-hot vertex is -inf/NaN), so the supervised ELBO is the discrete one, the
same as every other estimator's.

Numerics: the model evaluates the relaxed prior density at the guide's sample, which
takes ``log(y)``; a float32 component that underflows to 0 would give NaN. The soft sample
is therefore clamped below at the smallest normal float (log = -87 in float32), as Pyro's
straight-through class clamps its soft sample with ``clamp_probs``.

The temperature follows Jang et al. (2017): ``tau = max(tau_min, tau0 * exp(-rate * t))``
with ``t`` the training step rounded down to a multiple of ``every``. A fixed ``rate`` means
nothing without the run's length (3e-5 per step keeps tau at 1.0 for a 1,300-step run), so the
harness expresses the schedule against the run's budget: :meth:`TemperatureSchedule.for_budget`
gives the ``rate`` and ``every`` with which tau reaches ``tau_min`` at a given fraction of the
run's steps (half, by default) in ``updates`` steps, and stays there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger


@dataclass(frozen=True)
class TemperatureSchedule:
    """``tau(step) = max(tau_min, tau0 * exp(-rate * every * floor(step / every)))``."""

    tau0: float = 1.0
    tau_min: float = 0.5
    rate: float = 3e-5
    every: int = 2000

    def __post_init__(self):
        if not (self.tau0 > 0 and self.tau_min > 0 and self.rate >= 0 and self.every >= 1):
            raise ValueError(f"invalid temperature schedule {self}")

    def __call__(self, step: int) -> float:
        t = (int(step) // self.every) * self.every
        return max(self.tau_min, self.tau0 * math.exp(-self.rate * t))

    def floor_step(self) -> float:
        """The first step at which tau equals ``tau_min`` (inf if it never does)."""
        if self.tau0 <= self.tau_min:
            return 0
        if self.rate == 0:
            return math.inf
        t = math.log(self.tau0 / self.tau_min) / self.rate
        step = math.ceil(t / self.every) * self.every
        while self(step) > self.tau_min:  # rounding of exp/log at the boundary
            step += self.every
        return step

    @classmethod
    def for_budget(cls, steps: int, tau0: float = 1.0, tau_min: float = 0.5, fraction: float = 0.5,
                   updates: int = 20) -> "TemperatureSchedule":
        """The schedule that anneals tau0 -> tau_min by step ``fraction * steps``, in ``updates`` updates."""
        if steps < 1 or not 0 < fraction <= 1 or updates < 1:
            raise ValueError(f"invalid budget: steps={steps}, fraction={fraction}, updates={updates}")
        every = max(1, math.floor(fraction * (steps - 1) / updates))
        t_floor = every * max(1, math.floor(fraction * (steps - 1) / every))
        rate = math.log(tau0 / tau_min) / t_floor * (1 + 1e-9) if tau0 > tau_min else 0.0
        return cls(tau0, tau_min, rate, every)

    def options(self) -> dict:
        """The estimator options (``tau0``, ``tau_min``, ``rate``, ``every``) of this schedule."""
        return {"tau0": self.tau0, "tau_min": self.tau_min, "rate": self.rate, "every": self.every}


class _ClampedRelaxedOneHotCategorical(dist.RelaxedOneHotCategorical):
    """RelaxedOneHotCategorical whose samples are clamped away from exact zeros."""

    def rsample(self, sample_shape=torch.Size()):
        y = super().rsample(sample_shape)
        return y.clamp(min=torch.finfo(y.dtype).tiny)


class RelaxLatent(Messenger):
    """Replace the latent one-hot categorical at ``site`` by its relaxation.

    ``temperature`` is a plain attribute: whoever owns the messenger (the estimator's
    step hook) sets it between steps; model and guide, wrapped by the same instance, share it.
    """

    def __init__(self, temperature: float, straight_through: bool = False, site: str = "y"):
        super().__init__()
        self.temperature = float(temperature)
        self.straight_through = straight_through
        self.site = site

    def state_dict(self) -> dict:
        """The temperature now: a resumed run restores it, so that a probe before its next step (which
        sets it again from the step count) reads what the uninterrupted run's probe reads."""
        return {"temperature": self.temperature}

    def load_state_dict(self, state: dict) -> None:
        self.temperature = float(state["temperature"])

    def _pyro_sample(self, msg):
        if msg["name"] != self.site or msg["is_observed"]:
            return
        fn = msg["fn"]
        if not isinstance(fn, dist.OneHotCategorical):
            raise TypeError(f"RelaxLatent expects OneHotCategorical at site {self.site!r}, got {type(fn).__name__}")
        logits = fn.logits
        tau = torch.tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        cls = dist.RelaxedOneHotCategoricalStraightThrough if self.straight_through else _ClampedRelaxedOneHotCategorical
        # the support check of a simplex fails by rounding on clamped soft samples: no validation
        msg["fn"] = cls(tau, logits=logits, validate_args=False)
