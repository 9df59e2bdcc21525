"""The SS-VAE's objectives written by hand in plain PyTorch: no Pyro, no ``torch.distributions``.

This is the yardstick of the performance-regression suite: one step of each kind, computed
with the same networks (an :class:`~ssvae.model.SSVAE`'s modules, so the same parameters)
and the same random draws as Pyro, but with nothing between the tensors and autograd. The
time of a Pyro step divided by the time of the matching reference step is Pyro's overhead;
it is a ratio measured on one machine in one run, so it survives a change of machine far
better than milliseconds do.

Losses are negative ELBOs summed over the batch, as Pyro's ``loss`` returns them:

* :func:`unsup_enum_loss` -- y summed out exactly, all 10 labels in one batched pass
  (Pyro's ``config_enumerate(parallel)`` + ``TraceEnum_ELBO``);
* :func:`unsup_enum_seq_loss` -- the same sum, one label at a time (``sequential``);
* :func:`unsup_sampled_loss` -- y ~ q(y|x) with the score-function surrogate, z
  reparameterised (``Trace_ELBO``);
* :func:`unsup_rloo_loss` -- k draws of y ~ q(y|x), each scored against the mean of the others
  (:mod:`ssvae.rloo`, registry ``rloo``);
* :func:`unsup_rb_topk_loss` -- the k most probable labels summed, one of the rest drawn
  (:mod:`ssvae.rb`, registry ``rb-topk``, ``rb-top3``, ``rb-topk-plain``);
* :func:`sup_loss` -- y observed (every ELBO estimator on a labeled batch);
* :func:`aux_loss` -- ``multiplier * -log q(y|x)`` on labeled data (``model_classify``).

Each returns ``(surrogate, loss)``: ``surrogate.backward()`` gives the gradient Pyro's
``loss_and_grads`` gives for the same draws, ``loss`` (a float) is the value Pyro reports.
Random draws are made in Pyro's order with the same torch calls: the guide draws y first
(``torch.multinomial`` on the softmax of the normalised logits, as ``Categorical.sample``),
then z (``loc + scale * empty(shape).normal_()``, as ``Normal.rsample``); the model replays
them. So seeding torch before a reference loss and before a Pyro loss gives the same noise.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import DEFAULT_RUN
from .estimators import REGISTRY, get_estimator
from .model import SSVAE

LOG_2PI = math.log(2 * math.pi)

Loss = Tuple[torch.Tensor, float]


# -- log-densities, summed over the event dim -------------------------------------------------
def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z * z).sum(-1) - 0.5 * LOG_2PI * z.shape[-1]


def normal_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    eps = (z - loc) / scale
    return (-0.5 * eps * eps - scale.log()).sum(-1) - 0.5 * LOG_2PI * z.shape[-1]


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x | sigmoid(logits)), summed over pixels; x may be fractional, as in Pyro."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


def draw_z(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reparameterised z, the same torch call as ``Normal(loc, scale).rsample()``."""
    eps = torch.empty(loc.shape, dtype=loc.dtype, device=loc.device).normal_()
    return loc + eps * scale


def draw_y(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot y ~ softmax(logits), the same torch calls as ``OneHotCategorical(logits).sample()``."""
    probs = torch.softmax(logits - logits.logsumexp(-1, keepdim=True), -1)
    idx = torch.multinomial(probs.reshape(-1, num_classes), 1, True).T.reshape(probs.shape[:-1])
    return F.one_hot(idx, num_classes).to(logits.dtype)


def _label_term(ss: SSVAE, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y) per datum (one z draw), broadcasting ys."""
    loc, scale = ss.encoder_z([xs, ys])
    z = draw_z(loc, scale)
    ys = ys.expand(z.shape[:-1] + ys.shape[-1:])
    logits = ss.decoder([z, ys])
    return (bernoulli_log_prob(logits, xs) - math.log(ss.num_classes)
            + std_normal_log_prob(z) - normal_log_prob(z, loc, scale))


# -- the objectives -----------------------------------------------------------------------------
def sup_loss(ss: SSVAE, xs: torch.Tensor, ys: torch.Tensor) -> Loss:
    """Labeled batch: -sum_b [log p(x,y,z) - log q(z|x,y)] with one reparameterised z."""
    elbo = _label_term(ss, xs, ys).sum()
    return -elbo, -elbo.item()


def unsup_enum_loss(ss: SSVAE, xs: torch.Tensor) -> Loss:
    """-sum_b [sum_y q(y|x) ELBO(x, y) + H(q(.|x))], all labels in one pass (y: (10, 1, 10))."""
    log_q_y = torch.log_softmax(ss.encoder_y(xs), -1)  # (B, 10)
    ys = torch.eye(ss.num_classes, dtype=xs.dtype, device=xs.device).unsqueeze(1)  # (10, 1, 10)
    per_label = _label_term(ss, xs, ys)  # (10, B)
    q_y = log_q_y.exp()
    elbo = (q_y.T * per_label).sum() - (q_y * log_q_y).sum()
    return -elbo, -elbo.item()


def unsup_enum_seq_loss(ss: SSVAE, xs: torch.Tensor) -> Loss:
    """The enumerated ELBO with one (B, ...) pass per label: the loop of sequential enumeration.

    Labels go last to first, the order in which Pyro's sequential enumeration (a LIFO queue
    of partial traces) runs the guide, so each label gets the z draw it gets in Pyro.
    """
    log_q_y = torch.log_softmax(ss.encoder_y(xs), -1)
    q_y = log_q_y.exp()
    elbo = -(q_y * log_q_y).sum()
    eye = torch.eye(ss.num_classes, dtype=xs.dtype, device=xs.device)
    for k in reversed(range(ss.num_classes)):
        elbo = elbo + (q_y[:, k] * _label_term(ss, xs, eye[k].expand(xs.shape[0], -1))).sum()
    return -elbo, -elbo.item()


def unsup_sampled_loss(ss: SSVAE, xs: torch.Tensor) -> Loss:
    """y ~ q(y|x), z reparameterised; the surrogate is Pyro ``Trace_ELBO``'s.

    ``elbo_b = log p(x,y,z) - log q(z|x,y) - log q(y|x)``. Its gradient estimate is that of
    ``sum_b [log p(x,y,z) - log q(z|x,y)] + sum_b log q(y_b|x_b) * stop_grad(elbo_b)``: the
    term ``-grad log q(y|x)`` has mean zero and Pyro leaves it out, and so does this.
    """
    logits = ss.encoder_y(xs)
    ys = draw_y(logits, ss.num_classes)
    log_q = torch.log_softmax(logits, -1)
    log_q_y = (log_q * ys).sum(-1)  # (B,)
    term = _label_term(ss, xs, ys)  # (B,)
    elbo_b = (term - log_q_y).detach()
    surrogate = term.sum() + (log_q_y * elbo_b).sum()
    return -surrogate, -elbo_b.sum().item()


def _categorical_draws(logits: torch.Tensor, n: int) -> torch.Tensor:
    """(n, B) label indices, the torch calls of ``Categorical(logits).sample((n,))``."""
    probs = torch.softmax(logits - logits.logsumexp(-1, keepdim=True), -1)
    return torch.multinomial(probs, n, True).T


def unsup_rloo_loss(ss: SSVAE, xs: torch.Tensor, k: int = 10) -> Loss:
    """k draws y_i ~ q(y|x), one z each; ``f_i = term_i - log q(y_i|x)``; the surrogate
    ``mean_i [f_i + stop_grad(f_i - mean_{j != i} f_j) log q(y_i|x)]`` summed over the batch."""
    logits = ss.encoder_y(xs)
    log_q = torch.log_softmax(logits, -1)
    with torch.no_grad():
        idx = _categorical_draws(log_q.detach(), k)  # (k, B)
    ys = F.one_hot(idx, ss.num_classes).to(xs.dtype)  # (k, B, 10)
    log_q_y = log_q.gather(-1, idx.T).T  # (k, B)
    f = _label_term(ss, xs, ys) - log_q_y
    fd = f.detach()
    loo = (fd.sum(0, keepdim=True) - fd) / (k - 1)
    elbo = f.mean(0).sum()
    score = ((fd - loo) * log_q_y).mean(0).sum()
    return -(elbo + score - score.detach()), -elbo.item()


def unsup_rb_topk_loss(ss: SSVAE, xs: torch.Tensor, k: int = 1, baseline: bool = True) -> Loss:
    """The top-k labels of q(y|x) (in label order) summed, one label of the rest drawn from q
    renormalised; one z per slot. The tail's score term is baselined by the top labels' q-weighted
    mean f when ``baseline`` (see :mod:`ssvae.rb`)."""
    log_q = torch.log_softmax(ss.encoder_y(xs), -1)  # (B, 10)
    with torch.no_grad():
        top = log_q.topk(k, dim=-1).indices.sort(-1).values  # (B, k)
        rest = log_q.detach().scatter(-1, top, float("-inf"))
        draw = _categorical_draws(rest, 1)[0]  # (B,)
        idx = torch.cat([top, draw[:, None]], dim=-1)  # (B, k + 1)
    ys = F.one_hot(idx.T, ss.num_classes).to(xs.dtype)  # (k + 1, B, 10)
    log_q_slots = log_q.gather(-1, idx).T  # (k + 1, B)
    f = _label_term(ss, xs, ys) - log_q_slots
    top_part = (log_q_slots[:k].exp() * f[:k]).sum(0)
    mask = torch.zeros_like(log_q, dtype=torch.bool).scatter(-1, top, True)
    log_tail = log_q.masked_fill(mask, float("-inf")).logsumexp(-1)
    elbo = (top_part + log_tail.exp() * f[k]).sum()
    cost = f[k].detach()
    if baseline:
        q_top = log_q_slots[:k].exp().detach()
        cost = cost - (q_top * f[:k].detach()).sum(0) / q_top.sum(0)
    score = (log_tail.exp().detach() * cost * (log_q_slots[k] - log_tail)).sum()
    return -(elbo + score - score.detach()), -elbo.item()


def aux_loss(ss: SSVAE, xs: torch.Tensor, ys: torch.Tensor, multiplier: Optional[float] = None) -> Loss:
    """``multiplier * -sum_b log q(y_b|x_b)`` (the classifier's cross-entropy, scaled)."""
    scale = ss.aux_multiplier if multiplier is None else multiplier
    loss = -scale * (torch.log_softmax(ss.encoder_y(xs), -1) * ys).sum()
    return loss, loss.item()


# -- which reference matches which (estimator, step kind) --------------------------------------
#: the hand-written counterpart of each registered estimator's unlabeled step: its registry record's
#: ``counterpart`` (``ssvae/estimators.py``)
UNSUP_COUNTERPART = {n: e.counterpart for n, e in REGISTRY.items() if e.kind == "ssvae" and e.counterpart}
#: Estimators with no hand-written counterpart of their unlabeled step (their step time is paired with
#: the YARDSTICK instead); each record says why (``Estimator.no_counterpart_reason``)
NO_COUNTERPART = {n for n, e in REGISTRY.items() if e.kind == "ssvae" and not e.counterpart}

#: estimators whose every step (labeled too) averages several particles (``Estimator.labeled_particles``)
MULTI_PARTICLE = {n for n, e in REGISTRY.items() if e.labeled_particles > 1}

#: reference step kinds and the loss each takes: ``fn(ss, xs, ys) -> (surrogate, loss)``
REFERENCE_LOSSES: Dict[str, Callable[..., Loss]] = {
    "sup": lambda ss, xs, ys: sup_loss(ss, xs, ys),
    "unsup-enum": lambda ss, xs, ys=None: unsup_enum_loss(ss, xs),
    "unsup-enum-seq": lambda ss, xs, ys=None: unsup_enum_seq_loss(ss, xs),
    "unsup-sampled": lambda ss, xs, ys=None: unsup_sampled_loss(ss, xs),
    "unsup-rloo": lambda ss, xs, ys=None: unsup_rloo_loss(ss, xs, k=10),
    "unsup-rb-topk": lambda ss, xs, ys=None: unsup_rb_topk_loss(ss, xs, k=1, baseline=True),
    "unsup-rb-top3": lambda ss, xs, ys=None: unsup_rb_topk_loss(ss, xs, k=3, baseline=True),
    "unsup-rb-topk-plain": lambda ss, xs, ys=None: unsup_rb_topk_loss(ss, xs, k=1, baseline=False),
    "aux": lambda ss, xs, ys: aux_loss(ss, xs, ys),
    "baseline": lambda ss, xs, ys: aux_loss(ss, xs, ys, multiplier=1.0),
}


def counterpart(estimator: str, step_kind: str, estimator_kind: str = "ssvae") -> Optional[str]:
    """The reference step that computes what ``estimator``'s Pyro step of ``step_kind`` computes.

    ``None`` where there is no hand-written counterpart (an estimator added without one).
    """
    est = REGISTRY.get(estimator)
    if estimator_kind == "supervised":
        return est.counterpart if est is not None and step_kind == "sup" else None
    if step_kind == "sup" and est is not None and est.labeled_particles > 1:
        return None  # its labeled step averages k particles: k reference steps' work, not one
    if step_kind in ("sup", "aux"):
        return step_kind
    return est.counterpart if est is not None and est.kind == "ssvae" else None


#: the reference step that stands in, as a yardstick, for an unlabeled step with no counterpart
YARDSTICK = "unsup-sampled"


def pairing(estimator: str, step_kind: str) -> Tuple[str, bool]:
    """(reference step kind, exact) for ``estimator``'s Pyro step of ``step_kind``.

    The pairing the step-time benchmarks (``tests/benchmarks``) and the harness's timing probe
    (``bench.timing_probe.run_timing``) share: the exact counterpart (:func:`counterpart`) where there
    is one, else the :data:`YARDSTICK` (one reference pass of the networks) with ``exact``
    False -- a yardstick is a scale, not Pyro's overhead.
    """
    exact = counterpart(estimator, step_kind, get_estimator(estimator).kind)
    return (exact, True) if exact else (YARDSTICK, False)


def reference_step(cfg, ref_kind: str, xs: torch.Tensor, ys: Optional[torch.Tensor] = None) -> Callable[[], float]:
    """A zero-argument callable taking one :class:`ReferenceStepper` step of ``ref_kind`` on (xs, ys).

    The network is a fresh :class:`~ssvae.model.SSVAE` of ``cfg``'s sizes (a
    :class:`~ssvae.config.RunConfig`), seeded with ``cfg.seed``, on ``xs``'s device, with
    plain ``torch.optim.Adam`` at ``cfg``'s learning rate and beta1: the reference twin of a
    ``Trainer`` built from the same config.
    """
    import pyro  # seeding only: python, numpy and torch as ``ssvae.train.set_seed`` does

    pyro.set_rng_seed(cfg.seed)
    ss = SSVAE(input_size=xs.shape[-1], z_dim=cfg.z_dim, hidden=cfg.hidden,
               aux_multiplier=cfg.aux_multiplier).to(xs.device)
    stepper = ReferenceStepper(ss, lr=cfg.lr, beta1=cfg.beta1)
    return lambda: stepper.step(ref_kind, xs, ys)


class ReferenceStepper:
    """One optimisation step with plain ``torch.optim.Adam`` (Pyro's lr and betas)."""

    def __init__(self, ss: SSVAE, lr: float = DEFAULT_RUN.lr, beta1: float = DEFAULT_RUN.beta1):
        self.ss = ss
        self.optim = torch.optim.Adam(ss.parameters(), lr=lr, betas=(beta1, 0.999))

    def step(self, kind: str, xs: torch.Tensor, ys: Optional[torch.Tensor] = None) -> float:
        surrogate, loss = REFERENCE_LOSSES[kind](self.ss, xs, ys)
        self.optim.zero_grad(set_to_none=True)
        surrogate.backward()
        self.optim.step()
        return loss
