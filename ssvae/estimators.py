"""The registry of ELBO-gradient estimators: each is named once, here.

An estimator turns an :class:`~ssvae.model.SSVAE` into an :class:`Objective`: the model,
the guide and the Pyro loss whose ``loss_and_grads`` gives one stochastic gradient of the
negative ELBO. The same objective serves labeled batches (``y`` observed: nothing discrete
to estimate) and unlabeled ones (``y`` latent: this is where estimators differ).

``kind`` is ``"ssvae"`` for the generative model, ``"supervised"`` for the baseline that
trains the classifier q(y|x) on the labeled images alone.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List

from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, config_enumerate

from .errors import ConfigError

# Labeled batches observe y, so the enumerated guide has nothing to enumerate there: expected.
warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured for enumeration")
from .model import SSVAE


@dataclass
class Objective:
    """What an SVI step needs: ``SVI(objective.model, objective.guide, optim, objective.loss)``."""

    model: Callable
    guide: Callable
    loss: ELBO

    def loss_and_grads(self, *args, **kwargs) -> float:
        """One stochastic estimate: fills ``.grad`` of the parameters, returns the loss."""
        return self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)


@dataclass(frozen=True)
class Estimator:
    name: str
    description: str
    build: Callable[[SSVAE, dict], Objective]
    kind: str = "ssvae"
    #: whether E[gradient] equals the exact (enumerated) ELBO gradient
    unbiased: bool = True
    #: label used in tables for the Pyro tutorial's variants
    pyro_variant: str = ""


def _trace(ss: SSVAE, options: dict) -> Objective:
    return Objective(ss.model, ss.guide, Trace_ELBO(max_plate_nesting=1))


def _enum(strategy: str):
    def build(ss: SSVAE, options: dict) -> Objective:
        guide = config_enumerate(ss.guide, strategy)
        return Objective(ss.model, guide, TraceEnum_ELBO(max_plate_nesting=1))

    return build


def _baseline(ss: SSVAE, options: dict) -> Objective:
    def model(xs, ys=None):
        return ss.model_classify(xs, ys, multiplier=1.0)

    return Objective(model, ss.guide_classify, Trace_ELBO(max_plate_nesting=1))


REGISTRY: Dict[str, Estimator] = {}


def register(est: Estimator) -> Estimator:
    if est.name in REGISTRY:
        raise ValueError(f"estimator {est.name!r} registered twice")
    REGISTRY[est.name] = est
    return est


register(Estimator(
    "trace", "sample y ~ q(y|x); score-function (REINFORCE) gradient via Trace_ELBO", _trace,
    pyro_variant="first variant"))
register(Estimator(
    "enum", "sum y out exactly: config_enumerate(parallel) + TraceEnum_ELBO", _enum("parallel"),
    pyro_variant="second variant"))
register(Estimator(
    "enum-seq", "sum y out exactly, one label value at a time: config_enumerate(sequential)",
    _enum("sequential")))
register(Estimator(
    "baseline", "supervised-only classifier: q(y|x) trained by cross-entropy on the labeled images",
    _baseline, kind="supervised", pyro_variant="baseline classifier"))


def get_estimator(name: str) -> Estimator:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown estimator {name!r}: choose from {', '.join(REGISTRY)}") from None


def names(kind: str = None) -> List[str]:
    return [n for n, e in REGISTRY.items() if kind is None or e.kind == kind]
