"""The semi-supervised VAE (Kingma et al. 2014, model M2), as in Pyro's ``ss_vae_M2.py``.

Generative story, for each image in a batch::

    z ~ Normal(0, I)                      # handwriting style, z_dim numbers
    y ~ OneHotCategorical(1/10, ..., 1/10) # which digit; observed when labeled
    x ~ Bernoulli(decoder(z, y))          # 784 pixels

Variational family::

    q(y | x)    = OneHotCategorical(softmax(encoder_y(x)))    # the classifier
    q(z | x, y) = Normal(encoder_z(x, y))                     # loc, exp(log_scale)

For an unlabeled image the label y is a latent variable of the guide: it is sampled by
``Trace_ELBO`` (a score-function estimator) or summed out by ``TraceEnum_ELBO`` when the
guide is wrapped in ``config_enumerate``. The classifier q(y|x) learns from labels only
through the auxiliary loss ``model_classify`` (Kingma's alpha term), scaled by
``aux_multiplier``.

Shapes: ``xs`` is (batch, 784) and ``ys`` (batch, 10) one-hot. Under parallel enumeration
``ys`` in the guide is (10, 1, 10) and ``zs`` (10, batch, z_dim); with vectorised particles
another leading dim appears. The networks broadcast over those leading dims.

The decoder and the classifier output logits: Bernoulli(logits) and
OneHotCategorical(logits) are the sigmoid decoder and softmax classifier of Pyro's example,
computed in a numerically stable way.
"""
from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .config import DEFAULT_RUN, NUM_CLASSES
from .nets import MLP, GaussianMLP


class SSVAE(nn.Module):
    #: the name its parameters have in Pyro's param store (``pyro.module``): ``ss_vae$$$encoder_y...``
    PYRO_NAME = "ss_vae"

    def __init__(self, input_size: int = 784, num_classes: int = NUM_CLASSES, z_dim: int = DEFAULT_RUN.z_dim,
                 hidden: Sequence[int] = DEFAULT_RUN.hidden, aux_multiplier: float = DEFAULT_RUN.aux_multiplier):
        super().__init__()
        self.input_size = input_size
        self.num_classes = num_classes
        self.z_dim = z_dim
        self.aux_multiplier = aux_multiplier
        hidden = list(hidden)
        self.encoder_y = MLP(input_size, hidden, num_classes)
        self.encoder_z = GaussianMLP(input_size + num_classes, hidden, z_dim)
        self.decoder = MLP(z_dim + num_classes, hidden, input_size)

    # -- parameter groups, as reported by the gradient-variance probe ------------------
    PARAM_GROUPS = ("encoder_y", "encoder_z", "decoder")

    def param_groups(self) -> dict:
        return {name: list(getattr(self, name).parameters()) for name in self.PARAM_GROUPS}

    # -- the generative model p(x, y, z) and its guide q(y, z | x) ----------------------
    def model(self, xs: torch.Tensor, ys: torch.Tensor = None):
        pyro.module(self.PYRO_NAME, self)
        batch_size = xs.shape[0]
        with pyro.plate("data", batch_size):
            prior_loc = xs.new_zeros(batch_size, self.z_dim)
            prior_scale = xs.new_ones(batch_size, self.z_dim)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            y_prior = xs.new_full((batch_size, self.num_classes), 1.0 / self.num_classes)
            ys = pyro.sample("y", dist.OneHotCategorical(probs=y_prior), obs=ys)
            logits = self.decoder([zs, ys])
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs: torch.Tensor, ys: torch.Tensor = None):
        batch_size = xs.shape[0]
        with pyro.plate("data", batch_size):
            if ys is None:  # unlabeled: y is latent, q(y|x) is the classifier
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, scale = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- the auxiliary classification loss: alpha * E_labeled[-log q(y|x)] ---------------
    def model_classify(self, xs: torch.Tensor, ys: torch.Tensor = None, multiplier: float = None):
        pyro.module(self.PYRO_NAME, self)
        if ys is None:  # nothing to learn from unlabeled images
            return
        scale = self.aux_multiplier if multiplier is None else multiplier
        with pyro.plate("data", xs.shape[0]), pyro.poutine.scale(scale=scale):
            pyro.sample("y_aux", dist.OneHotCategorical(logits=self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs: torch.Tensor, ys: torch.Tensor = None, multiplier: float = None):
        """No latent variables: the auxiliary "ELBO" is the scaled log-likelihood."""

    # -- using the trained model ---------------------------------------------------------
    @torch.no_grad()
    def classify(self, xs: torch.Tensor) -> torch.Tensor:
        """The most probable digit under q(y|x), as integer labels (batch,)."""
        return self.encoder_y(xs).argmax(-1)

    @torch.no_grad()
    def sample_images(self, digits: torch.Tensor, zs: torch.Tensor = None,
                      generator: torch.Generator = None) -> torch.Tensor:
        """Pixel probabilities of p(x | y, z) for each digit: (n, 784).

        ``zs`` (n, z_dim) fixes the style; by default z ~ N(0, I), one draw per image. Passing the
        same z beside every digit gives Kingma et al.'s analogy figure: style held, class varied.
        """
        ys = torch.nn.functional.one_hot(digits.long(), self.num_classes).float()
        device = self.decoder.out.weight.device
        if zs is None:
            zs = torch.randn(len(digits), self.z_dim, generator=generator)
        zs = zs.to(device)
        return torch.sigmoid(self.decoder([zs, ys.to(device)]))
