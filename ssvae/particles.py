"""Gradient draws of the probe from one vectorised forward and one backward (per-particle gradients).

The gradient probe (:func:`ssvae.metrics.draw_gradients`) wants n independent estimates g_1..g_n
of one estimator's gradient at fixed parameters. The loop calls ``loss_and_grads`` n times. Here
the estimator's own Pyro loss is cloned with ``n * k`` vectorised particles (k: the loss's own
particles, 1 for most; ``trace-k10``'s draw is the mean of its k = 10) and run once: the particle
plate is batch dim -2, so particle i's terms of the ELBO, its score-function costs (summed within
the plate, never across it) and its dice factors involve its own samples only, and draw j is the
mean of particles j*k .. j*k + k - 1 -- the same distribution as one ``loss_and_grads`` call.

One backward gives only the gradient summed over particles. Every parameter of the SS-VAE is the
weight or the bias of an ``nn.Linear`` (``ssvae.nets``), whose gradient is a sum over examples of
an outer product (Goodfellow 2015, "Efficient per-example gradient computations"; Opacus does the
same): with x the layer's input and g the gradient of the loss at its output,
``dW = sum g^T x`` and ``db = sum g`` over every leading dim. Summing over every leading dim but the
particle dim (dim -3 of an activation) gives each particle's gradient. While the loss runs, a
forward hook on every ``nn.Linear`` whose weight belongs to a measured group keeps (input, output) of
each call, the output with its particle dim of size n*k: where the input has no particle dim or a
shared one of size 1 (x enters the encoders as (batch, 784); an enumerated y is (10, 1, 1, 10)), the
output is computed once and expanded, a view per particle, so that the gradient reaching it is per
particle (expanding the input would give the same numbers for n*k times the product).

``torch.autograd.grad`` of the loss with respect to the kept outputs is the one backward (the
summed parameter gradients, which nothing reads, are not computed); then ``einsum``-like products give each
particle's weight and bias gradient. The loss divides by its number of particles, so each
particle's gradient is scaled by n*k, and the mean of a draw's k particles by n*k/k = n: each draw
is one estimate exactly as ``loss_and_grads`` gives it (with the same seed, one draw of the
loop and one batched draw are the same numbers, and so are n draws of a labeled batch, where z is
the only noise and n draws at once take the numbers of n draws in turn when batch x z_dim is a
multiple of 16, torch's block of normal numbers).

The draws are taken in chunks whose Linear inputs, outputs and output gradients, and per-draw
gradients, fit a memory budget (``budget_mb``): the first chunk is one draw and measures what a
draw holds. Everything is restored on the way out, error or not: hooks removed, Pyro's param
store as it was (:func:`ssvae.paramstore.preserved_param_store`), ``.grad`` of the groups cleared.

:func:`supports` says which objectives this applies to: only losses whose vectorised particles
are proven independent draws of the loop's estimate, Pyro's ``Trace_ELBO`` and ``TraceEnum_ELBO``
themselves (not a subclass, not a custom loss), with no baseline that learns between draws. Where
it pays: the n draws become n-fold larger matrix products, so a launch-bound device (a GPU) gains
most (expected; not measured yet). On a CPU with one thread the products were already large: the gain
is the Python and Pyro overhead of n - 1 calls and the products the particles share, against larger
tensors that leave the cache; ``results/benchmarks/probe-draws.md`` measures 0.92x (trace, slower) to
1.1x (enum).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Tuple

import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO
from torch import nn
from torch.nn.modules import module as torch_module

from .paramstore import preserved_param_store

#: the losses whose vectorised particles are independent draws of one ``loss_and_grads`` call
EXACT_LOSSES = (Trace_ELBO, TraceEnum_ELBO)
#: default memory budget of one chunk of draws (Linear activations, their gradients, the draws)
BUDGET_MB = 256


def supports(objective) -> bool:
    """Whether batched draws of ``objective`` have the loop's distribution (see the module docstring).

    Pyro's ``Trace_ELBO`` and ``TraceEnum_ELBO`` exactly (trace, enum, enum-seq, trace-k10, gumbel,
    gumbel-st, baseline); not TraceGraph_ELBO (trace-avg, trace-bx), NVIL, rb-topk or rloo, and no
    objective carrying a baseline network."""
    return type(objective.loss) in EXACT_LOSSES and getattr(objective, "baseline", None) is None


def particles_per_draw(loss: ELBO) -> int:
    """k: the particles one ``loss_and_grads`` call of ``loss`` averages."""
    return int(loss.num_particles)


def vectorised_clone(loss: ELBO, particles: int) -> ELBO:
    """``loss`` with ``particles`` vectorised particles (its other settings kept)."""
    base = loss.max_plate_nesting - (1 if loss.vectorize_particles and loss.num_particles > 1 else 0)
    return type(loss)(num_particles=particles, max_plate_nesting=base, vectorize_particles=True,
                      strict_enumeration_warning=loss.strict_enumeration_warning,
                      ignore_jit_warnings=loss.ignore_jit_warnings, jit_options=loss.jit_options)


def _expand(x: torch.Tensor, particles: int) -> torch.Tensor:
    """``x`` with its particle dim (-3) of size ``particles``: added when missing, broadcast when 1."""
    if particles == 1:
        return x
    if x.dim() == 2:
        return x.expand(particles, *x.shape)
    if x.dim() >= 3 and x.shape[-3] in (1, particles):
        return x.expand(*x.shape[:-3], particles, *x.shape[-2:])
    raise ValueError(f"a Linear input of shape {tuple(x.shape)} has no particle dim (-3) of size 1 or "
                     f"{particles}")


class _Recorder:
    """A forward hook on every ``nn.Linear`` whose weight is in ``params``: keep (module, input, output),
    the output with its particle dim of size ``particles`` (:func:`_expand`)."""

    def __init__(self, params: set, particles: int):
        self.params, self.particles = params, particles
        self.calls: List[Tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []

    def __call__(self, module, inputs, output):
        if not (isinstance(module, nn.Linear) and id(module.weight) in self.params):
            return None
        if inputs[0].dim() >= 3 and inputs[0].shape[-3] == self.particles:
            out = output
        else:  # an input shared by the particles: one product, a view per particle
            out = _expand(output, self.particles)
        self.calls.append((module, inputs[0], out))
        return out

    def nbytes(self) -> int:
        """Bytes of the kept inputs, outputs and outputs' gradients."""
        return sum(x.numel() * x.element_size() + 2 * out.numel() * out.element_size() for _, x, out in self.calls)


@contextlib.contextmanager
def _hooks(recorder: _Recorder):
    """The recorder as a forward hook of every module call (a global hook), removed on the way out."""
    handle = torch_module.register_module_forward_hook(recorder)
    try:
        yield recorder
    finally:
        handle.remove()


def _linear_grads(x: torch.Tensor, g: torch.Tensor, draws: int, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-draw (draws, out, in) weight and (draws, out) bias gradients (summed over each draw's k particles)
    of one Linear call with input ``x`` (before expansion) and output gradient ``g``."""
    h, i = g.shape[-1], x.shape[-1]
    if draws * k == 1:  # no particle plate: one draw, every leading dim summed
        g2 = g.reshape(-1, h)
        return (g2.T @ x.expand(*g.shape[:-1], i).reshape(-1, i))[None], g2.sum(0)[None]
    b = g.shape[-2]
    g5 = g.reshape(-1, draws, k, b, h)  # (enumeration, draw, particle of the draw, batch, out)
    if x.dim() >= 3 and x.shape[-3] == draws * k:  # the input differs by particle: a batched product per draw
        g4, x4 = g5.reshape(-1, draws, k * b, h), x.reshape(-1, draws, k * b, i)
        w = torch.bmm(g4[0].transpose(1, 2), x4[0])
        for e in range(1, g4.shape[0]):
            w.baddbmm_(g4[e].transpose(1, 2), x4[e])
    else:  # the input is shared by the particles: sum their output gradients first, one product per draw
        gs, xs = g5.sum(2), x.expand(*g.shape[:-3], 1, b, i).reshape(-1, i)
        w = g.new_empty((draws, h, i))
        for d in range(draws):
            torch.mm(gs[:, d].reshape(-1, h).T, xs, out=w[d])
    return w, g5.sum((0, 2, 3))


def _chunk(objective, groups: Dict[str, List[torch.Tensor]], args: tuple, draws: int,
           k: int) -> Tuple[Dict[str, torch.Tensor], int]:
    """``draws`` gradient estimates in one run: ({group: (draws, P)}, bytes a draw held)."""
    params = [p for ps in groups.values() for p in ps]
    loss = vectorised_clone(objective.loss, draws * k)
    with _hooks(_Recorder({id(p) for p in params}, draws * k)) as rec:
        value = loss.differentiable_loss(objective.model, objective.guide, *args)
    if not torch.is_tensor(value) or not value.requires_grad:
        return {}, rec.nbytes() // draws
    calls = [c for c in rec.calls if c[2].requires_grad]
    covered = {id(t) for m, _, _ in calls for t in (m.weight, m.bias) if t is not None}
    others = [p for p in params if id(p) not in covered and p.requires_grad]
    grads = torch.autograd.grad(value, [out for _, _, out in calls] + others, allow_unused=True)
    if any(gr is not None for gr in grads[len(calls):]):
        raise RuntimeError("batched draws: a measured parameter that is not an nn.Linear weight or bias "
                           "receives a gradient (use the loop)")
    per: Dict[int, torch.Tensor] = {}
    for (m, x, _), g in zip(calls, grads):
        if g is None:
            continue
        w, b = _linear_grads(x.detach(), g, draws, k)
        for t, d in ((m.weight, w), (m.bias, b)):
            if t is not None:
                per[id(t)] = per[id(t)] + d if id(t) in per else d
    out = {}
    for name, ps in groups.items():
        if any(id(p) in per for p in ps):
            flat = [per.get(id(p), p.new_zeros((draws,) + p.shape)).reshape(draws, -1) for p in ps]
            out[name] = torch.cat(flat, 1).mul_(draws).detach()  # x (n k)/k: undo the loss's 1/(n k), mean of k
    per_draw = rec.nbytes() // draws + sum(t.numel() * t.element_size() for t in out.values()) // draws
    return out, per_draw


def draw_chunks(objective, groups: Dict[str, List[torch.Tensor]], args: tuple, n: int,
                budget_mb: float = BUDGET_MB) -> Iterator[Tuple[int, Dict[str, torch.Tensor]]]:
    """Yield ``n`` gradient estimates of ``objective`` in chunks, each ``(draws, {group: (draws, P)})``
    (detached; groups with no gradient left out). Every chunk starts from the state the probe began with."""
    if not supports(objective):
        raise ValueError(f"batched draws do not support the loss {type(objective.loss).__name__} "
                         "(ssvae.particles.supports)")
    k = particles_per_draw(objective.loss)
    budget = max(1, int(budget_mb * 2 ** 20))
    params = [p for ps in groups.values() for p in ps]
    done, per_draw = 0, None
    while done < n:
        size = 1 if per_draw is None else max(1, min(n - done, budget // max(per_draw, 1)))
        try:
            with preserved_param_store():
                chunk, per_draw = _chunk(objective, groups, args, size, k)
        finally:
            for p in params:
                p.grad = None
        done += size
        yield size, chunk
