"""Floating-point operations of one training step, counted from the layer shapes.

Only the dense layers are counted: they are where the time goes at these sizes
(784-500-50, batch 200); the elementwise work (softplus, exp, log-densities, Adam's update
of ~1.3 M parameters) is a few percent of it and memory-bound, and is left out.

For a ``Linear(n_in, n_out)`` applied to ``rows`` inputs:

* forward: ``2 * rows * n_in * n_out`` (matmul) ``+ rows * n_out`` (bias);
* backward: the weight gradient ``2 * rows * n_in * n_out`` plus the bias gradient
  ``rows * n_out``, and the input gradient ``2 * rows * n_in * n_out`` only where the input
  needs one -- not for a first layer fed with data (x, an observed or enumerated y), but for
  the decoder's first layer, whose input holds the reparameterised z.

So a hidden or output layer costs ~3x its forward pass and a first layer on data ~2x.

Which networks run, on how many rows (B = batch size, K = 10 labels):

============== ============ ============ ==========
step kind      encoder_y    encoder_z    decoder
============== ============ ============ ==========
sup            --           B            B
unsup-*        B            n * B        n * B
aux, baseline  B            --           --
============== ============ ============ ==========

The ``unsup-*`` kinds and their n are read from the registry: each estimator's record names its
hand-written counterpart (the step kind) and its ``particles``, the label values evaluated per image
(``None``: all K, as enumeration; unsup-enum-seq runs its K one after another, the same rows).

:func:`matmul_rate` measures the machine's dense matmul rate on a GEMM of the step's
shapes, so that ``step_flops / rate`` is the time a step would take at the compute limit.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .estimators import REGISTRY


def _unsup_particles() -> Dict[str, Optional[int]]:
    """Label values per image of each hand-written unlabeled step kind, from the estimators' records."""
    out: Dict[str, Optional[int]] = {}
    for est in REGISTRY.values():
        if est.kind == "ssvae" and est.counterpart:
            if out.setdefault(est.counterpart, est.particles) != est.particles:
                raise ValueError(f"step kind {est.counterpart!r}: estimators disagree on its particles")
    return out


#: label values per image of each unlabeled step kind (``None``: every label)
UNSUP_PARTICLES = _unsup_particles()
STEP_KINDS = ("sup", *UNSUP_PARTICLES, "aux", "baseline")


@dataclass(frozen=True)
class Sizes:
    input_size: int = 784
    num_classes: int = 10
    z_dim: int = 50
    hidden: Tuple[int, ...] = (500,)

    @classmethod
    def of(cls, ss) -> "Sizes":
        """The sizes of an :class:`~ssvae.model.SSVAE`."""
        hidden = tuple(m.out_features for m in ss.decoder.hidden if isinstance(m, torch.nn.Linear))
        return cls(ss.input_size, ss.num_classes, ss.z_dim, hidden)


def linear_flops(rows: int, n_in: int, n_out: int, input_grad: bool = True) -> Tuple[int, int]:
    """(forward, backward) FLOPs of one ``Linear(n_in, n_out)`` on ``rows`` inputs."""
    mm = 2 * rows * n_in * n_out
    forward = mm + rows * n_out
    backward = mm + rows * n_out + (mm if input_grad else 0)
    return forward, backward


def _layers(n_in: int, hidden: Sequence[int], heads: Sequence[int]) -> List[Tuple[int, int]]:
    """(n_in, n_out) of each Linear: the hidden stack, then one or more heads on its output."""
    layers, size = [], n_in
    for h in hidden:
        layers.append((size, h))
        size = h
    return layers + [(size, out) for out in heads]


def network_flops(rows: int, n_in: int, hidden: Sequence[int], heads: Sequence[int],
                  first_input_grad: bool) -> Tuple[int, int]:
    """(forward, backward) FLOPs of an MLP; ``heads`` are the output layers on the last hidden."""
    fwd = bwd = 0
    layers = _layers(n_in, hidden, heads)
    for i, (a, b) in enumerate(layers):
        # the heads read the last hidden layer (which needs a gradient) unless there is none
        first = i == 0 or (not hidden and i < len(heads))
        f, g = linear_flops(rows, a, b, input_grad=first_input_grad if first else True)
        fwd, bwd = fwd + f, bwd + g
    return fwd, bwd


def step_flops(kind: str, batch_size: int = 200, sizes: Sizes = Sizes()) -> Dict[str, int]:
    """FLOPs (forward + backward) of one step of ``kind``, by network, plus ``total`` and ``forward``."""
    if kind not in STEP_KINDS:
        raise ValueError(f"unknown step kind {kind!r}: one of {', '.join(STEP_KINDS)}")
    s, B, K = sizes, batch_size, sizes.num_classes
    if kind in UNSUP_PARTICLES:
        n = K if UNSUP_PARTICLES[kind] is None else UNSUP_PARTICLES[kind]
        rows = (B, n * B, n * B)
    else:
        rows = {"sup": (0, B, B), "aux": (B, 0, 0), "baseline": (B, 0, 0)}[kind]
    nets = {
        "encoder_y": (rows[0], s.input_size, s.hidden, (s.num_classes,), False),
        "encoder_z": (rows[1], s.input_size + s.num_classes, s.hidden, (s.z_dim, s.z_dim), False),
        "decoder": (rows[2], s.z_dim + s.num_classes, s.hidden, (s.input_size,), True),
    }
    out: Dict[str, int] = {}
    forward = 0
    for name, (r, n_in, hidden, heads, first_grad) in nets.items():
        f, b = network_flops(r, n_in, hidden, heads, first_grad) if r else (0, 0)
        out[name] = f + b
        forward += f
    out["total"] = sum(out[n] for n in nets)
    out["forward"] = forward
    return out


def matmul_rate(m: int = 2000, k: int = 794, n: int = 500, repeats: int = 30, warmup: int = 3,
                device: str = "cpu") -> Dict[str, float]:
    """The measured dense float32 matmul rate (GFLOP/s), median of ``repeats`` timed GEMMs.

    The default shape is encoder_z's first layer under enumeration: (10 x 200, 794) @ (794, 500).
    Returns the median and the best (max) rate and the median seconds per GEMM.
    """
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    out = torch.empty(m, n, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        times.append(time.perf_counter() - t0)
    flops = 2.0 * m * k * n
    med = statistics.median(times)
    return {"gflops_median": flops / med / 1e9, "gflops_best": flops / min(times) / 1e9,
            "seconds_median": med, "shape": [m, k, n], "repeats": repeats,
            "threads": torch.get_num_threads()}
