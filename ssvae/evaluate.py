"""A common objective for every estimator: the discrete model's test ELBO and an importance-weighted bound.

The estimators train different objectives (the relaxations a relaxed one, with y continuous in
both model and guide); they are compared here on one number, computed the same way for all, on
the discrete model M2 with y one-hot.

**Test ELBO, y summed exactly.** For an image x (unlabeled)::

    ELBO(x) = sum_y q(y|x) [ E_q(z|x,y) log p(x|y,z) - KL(q(z|x,y) || N(0, I)) + log p(y) - log q(y|x) ]

with p(y) = 1/10. The sum over the 10 labels is exact; the Gaussian KL is analytic; the
reconstruction term takes ``z_samples`` reparameterised draws per (image, label) from a generator
seeded by ``seed`` (the same noise for every epoch and every cell: common random numbers, so two
cells, or two epochs of one cell, differ by their networks only). Reported as the mean over images,
in nats per image (higher is better).

**Importance-weighted bound, y summed exactly.** With k draws z_1..z_k ~ q(z|x,y) per label::

    L_k(x) = log sum_y p(y) (1/k) sum_i p(x|y,z_i) p(z_i) / q(z_i|x,y)  <=  log p(x)   (in expectation)

By Jensen's inequality (twice) E L_k(x) >= E L_1(x) >= ELBO(x), and L_k -> log p(x) as k grows
(Burda et al. 2016, here stratified over the labels, so the bound does not depend on how well
q(y|x) covers them). It costs 10 k decoder passes per image.

Both run under ``torch.no_grad`` with their own generator: they do not move the training RNG.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .data import Split
from .errors import ConfigError
from .model import SSVAE

#: Seed of the evaluation noise (the same for every cell and epoch).
EVAL_SEED = 20240
#: Importance samples of z per label for the final bound.
IWAE_K = 100
#: The bound is taken on the first ``IWAE_IMAGES`` test images (None: all of them); see README.
IWAE_IMAGES = 1000
#: Decoder rows per chunk (images x labels x samples): about 6 MB of pixels, cache-friendlier (and
#: faster on CPU) than larger chunks. The evaluation noise is drawn chunk by chunk: a constant.
CHUNK_ROWS = 2_000

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class EvalPlan:
    """How much of the test set the common objective covers (a harness sets smaller numbers for smoke runs).

    ``elbo_images``: the per-epoch test ELBO on the first N test images (None: all 10,000; 0: none,
    for probes that train only to reach a checkpoint); ``iwae_k`` and ``iwae_images``: the final
    bound's draws per label and its first N test images (0: no bound).
    """

    elbo_images: Optional[int] = None
    iwae_k: int = IWAE_K
    iwae_images: Optional[int] = IWAE_IMAGES

    def __post_init__(self):
        for name in ("elbo_images", "iwae_images"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) != v or v < 0):
                raise ConfigError(f"{name} must be an image count (0: skip) or None for all (got {v!r})")
        if isinstance(self.iwae_k, bool) or int(self.iwae_k) != self.iwae_k or self.iwae_k < 1:
            raise ConfigError(f"iwae_k must be a positive integer (got {self.iwae_k!r})")

    @staticmethod
    def count(images: Optional[int], split: Split) -> int:
        return len(split) if images is None else min(int(images), len(split))


def _labels(ss: SSVAE, like: torch.Tensor) -> torch.Tensor:
    """The 10 one-hot labels, shaped (10, 1, 10) to broadcast over a batch."""
    return torch.eye(ss.num_classes, dtype=like.dtype, device=like.device).unsqueeze(1)


def _log_bernoulli(logits: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x | logits) summed over pixels (x may be grey: the model's likelihood)."""
    return -F.binary_cross_entropy_with_logits(logits, xs.expand_as(logits), reduction="none").sum(-1)


def _log_normal(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * _LOG_2PI).sum(-1)


@torch.no_grad()
def elbo_per_image(ss: SSVAE, xs: torch.Tensor, generator: torch.Generator, z_samples: int = 1) -> torch.Tensor:
    """ELBO(x) of each image of ``xs`` (B, D), y enumerated exactly: a (B,) tensor in nats."""
    log_qy = torch.log_softmax(ss.encoder_y(xs), -1)  # (B, 10)
    ys = _labels(ss, xs)  # (10, 1, 10)
    loc, scale = ss.encoder_z([xs, ys])  # (10, B, Z)
    eps = torch.randn((z_samples,) + loc.shape, generator=generator, device=xs.device, dtype=xs.dtype)
    zs = loc + scale * eps  # (S, 10, B, Z)
    rec = _log_bernoulli(ss.decoder([zs, ys]), xs).mean(0)  # (10, B)
    kl = 0.5 * (loc ** 2 + scale ** 2 - 1.0).sum(-1) - scale.log().sum(-1)  # (10, B)
    per_label = rec - kl - math.log(ss.num_classes) - log_qy.T  # (10, B)
    return (log_qy.T.exp() * per_label).sum(0)


@torch.no_grad()
def iwae_per_image(ss: SSVAE, xs: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """L_k(x) of each image of ``xs`` (B, D), y enumerated, k draws of z per label: a (B,) tensor."""
    ys = _labels(ss, xs)  # (10, 1, 10)
    loc, scale = ss.encoder_z([xs, ys])  # (10, B, Z)
    eps = torch.randn((k,) + loc.shape, generator=generator, device=xs.device, dtype=xs.dtype)
    zs = loc + scale * eps  # (k, 10, B, Z)
    log_w = (_log_bernoulli(ss.decoder([zs, ys]), xs)
             + (-0.5 * zs ** 2 - 0.5 * _LOG_2PI).sum(-1)
             - _log_normal(zs, loc, scale))  # (k, 10, B)
    log_px_y = torch.logsumexp(log_w, 0) - math.log(k)  # (10, B)
    return torch.logsumexp(log_px_y, 0) - math.log(ss.num_classes)


def _generator(device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(EVAL_SEED)


def mean_elbo(ss: SSVAE, split: Split, z_samples: int = 1, images: Optional[int] = None) -> float:
    """Mean ELBO per image (nats) over ``split`` (or its first ``images``), y summed exactly."""
    xs_all = split.x if images is None else split.x[:images]
    rows = max(1, CHUNK_ROWS // (ss.num_classes * z_samples))
    g = _generator(xs_all.device)
    total = sum(float(elbo_per_image(ss, xs_all[i:i + rows], g, z_samples).sum())
                for i in range(0, len(xs_all), rows))
    return total / max(len(xs_all), 1)


def mean_iwae(ss: SSVAE, split: Split, k: int = IWAE_K, images: Optional[int] = IWAE_IMAGES) -> float:
    """Mean importance-weighted bound L_k on log p(x) (nats per image) over the first ``images`` of ``split``."""
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    xs_all = split.x if images is None else split.x[:images]
    rows = max(1, CHUNK_ROWS // (ss.num_classes * k))
    g = _generator(xs_all.device)
    total = sum(float(iwae_per_image(ss, xs_all[i:i + rows], k, g).sum()) for i in range(0, len(xs_all), rows))
    return total / max(len(xs_all), 1)
