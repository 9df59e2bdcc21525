"""The registry of ELBO-gradient estimators: each is named once, here.

An estimator turns an :class:`~ssvae.model.SSVAE` into an :class:`Objective`: the model,
the guide and the Pyro loss whose ``loss_and_grads`` gives one stochastic gradient of the
negative ELBO. The same objective serves labeled batches (``y`` observed: nothing discrete
to estimate) and unlabeled ones (``y`` latent: this is where estimators differ).

``kind`` is ``"ssvae"`` for the generative model, ``"supervised"`` for the baseline that
trains the classifier q(y|x) on the labeled images alone.

Each :class:`Estimator` record is the one home of what the rest of the project knows about an
estimator: its report family, its option defaults (its builder reads them), the candidates tuning
searches, its hand-written counterpart in :mod:`ssvae.reference` (or why there is none), its particle
counts (:mod:`ssvae.flops`) and its measured step cost (:mod:`bench.cost`). Adding an estimator is its
module and its record (docs/estimators.md, "Adding an estimator").
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional

import pyro
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate
from torch import nn

from .config import RunConfig
from .errors import ConfigError

# Labeled batches observe y, so the enumerated guide has nothing to enumerate there: expected.
warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured for enumeration")
from .model import SSVAE
from .nets import MLP
from .nvil import NVIL
from .rb import RaoBlackwellTopK
from .relax import RelaxLatent, TemperatureSchedule
from .rloo import LeaveOneOut
from .unordered_set import UnorderedSet


@dataclass
class Objective:
    """What an SVI step needs: ``SVI(objective.model, objective.guide, optim, objective.loss)``."""

    model: Callable
    guide: Callable
    loss: ELBO
    #: Called with the trainer's global step before every optimisation step (e.g. to anneal
    #: a temperature); ``None`` for estimators without a schedule.
    step_hook: Optional[Callable[[int], None]] = None
    #: Learning rates of the estimator's own modules, by Pyro module name (NVIL's baseline:
    #: ``{"nvil_baseline": 4.2e-3}``); the SS-VAE's parameters take the run's learning rate.
    lr_by_module: Optional[Dict[str, float]] = None
    #: The estimator's own networks by Pyro module name (NVIL's and trace-bx's baseline), which a resumed
    #: run registers before it restores Pyro's param store into them; the SS-VAE's is the trainer's.
    modules: Dict[str, nn.Module] = field(default_factory=dict)

    def at_step(self, step: int) -> None:
        """Tell the objective which training step comes next (a no-op without a step hook)."""
        if self.step_hook is not None:
            self.step_hook(step)

    def state_dict(self) -> dict:
        """What the objective keeps between steps outside Pyro's param store, for a resumed run: the state of
        each part with a ``state_dict`` (a relaxation's temperature). Baselines, NVIL's running statistics and
        trace-avg's decaying average live in the param store and are saved with it."""
        return {name: part.state_dict() for name, part in self._stateful_parts().items()}

    def load_state_dict(self, state: dict) -> None:
        parts = self._stateful_parts()
        if set(state) != set(parts):
            raise ValueError(f"objective state holds {sorted(state)}, the objective has {sorted(parts)}")
        for name, part in parts.items():
            part.load_state_dict(state[name])

    def _stateful_parts(self) -> dict:
        """The loss and the helpers attached to the objective (``relax``) that have a ``state_dict``."""
        parts = {"loss": self.loss, "relax": getattr(self, "relax", None)}
        return {name: part for name, part in parts.items() if callable(getattr(part, "state_dict", None))}

    def loss_and_grads(self, *args, **kwargs) -> float:
        """One stochastic estimate: fills ``.grad`` of the parameters, returns the loss."""
        return self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)


#: the report's estimator families (colours and grouping: ``bench/report/common.py``)
FAMILIES = ("enumeration", "Rao-Blackwell", "relaxation", "score function", "supervised only")


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
    #: whether the objective keeps a baseline that learns from step to step (a decaying average, a
    #: network b(x) or C(x)): a measurement at given parameters must train it along the way first
    stateful: bool = False
    #: its family in the report (one of :data:`FAMILIES`)
    family: str = ""
    #: its options and their defaults: the one home of them (the builder reads them via ``_options``)
    defaults: Mapping = field(default_factory=dict, hash=False)
    #: tuning candidates per option, searched by a preset with a ``[tune]`` table that gives the
    #: estimator no table of its own (``bench/tune.py``); a table candidate sets several options at once
    search: Mapping = field(default_factory=dict, hash=False)
    #: the step kind of :mod:`ssvae.reference` that computes its unlabeled step by hand, or ``None``
    #: with ``no_counterpart_reason`` (its step time is then paired with the reference's yardstick)
    counterpart: Optional[str] = None
    no_counterpart_reason: str = ""
    #: label values evaluated per unlabeled image at the default options (decoder and encoder_z rows
    #: per image, :mod:`ssvae.flops`); ``None``: every label (K)
    particles: Optional[int] = 1
    #: particles of its labeled step (trace-k10 averages k there too: no one-pass counterpart)
    labeled_particles: int = 1
    #: work of its unlabeled step relative to enum's (``bench/cost.py``: the ETA and ``bench list``): the
    #: median step times of results/reference/quick-cpu/timing.csv (2 threads) over enum's unless its
    #: record says otherwise; the baseline's is a classifier step
    step_weight: Optional[float] = None

    def __post_init__(self):
        missing = [f for f, ok in (("family", self.family in FAMILIES),
                                   ("step_weight", isinstance(self.step_weight, (int, float)) and self.step_weight > 0),
                                   ("counterpart or no_counterpart_reason",
                                    bool(self.counterpart) != bool(self.no_counterpart_reason)))
                   if not ok]
        unknown = sorted(searched_options(self.search) - set(self.defaults))
        if unknown:
            missing.append(f"defaults of the searched option(s) {', '.join(unknown)}")
        if missing:
            raise ValueError(f"estimator {self.name!r}: its record lacks {'; '.join(missing)}")


def searched_options(search: Mapping) -> set:
    """The option names a ``search`` table sets (a table candidate sets each of its keys)."""
    return {name for key, values in search.items() for v in values for name in (v if isinstance(v, dict) else [key])}


def _trace(ss: SSVAE, options: dict) -> Objective:
    _options("trace", options)
    return Objective(ss.model, ss.guide, Trace_ELBO(max_plate_nesting=1))


def _enum(name: str, strategy: str):
    def build(ss: SSVAE, options: dict) -> Objective:
        _options(name, options)
        guide = config_enumerate(ss.guide, strategy)
        return Objective(ss.model, guide, TraceEnum_ELBO(max_plate_nesting=1))

    return build


def _enum_k(ss: SSVAE, options: dict) -> Objective:
    o = _options("enum-k10", options)
    o["k"] = _number("enum-k10", "k", o["k"], int, low=1)
    return Objective(ss.model, config_enumerate(ss.guide, "parallel"),
                     TraceEnum_ELBO(num_particles=o["k"], vectorize_particles=True, max_plate_nesting=1))


def _baseline(ss: SSVAE, options: dict) -> Objective:
    _options("baseline", options)

    def model(xs, ys=None):
        return ss.model_classify(xs, ys, multiplier=1.0)

    return Objective(model, ss.guide_classify, Trace_ELBO(max_plate_nesting=1))


def _options(name: str, options: dict) -> dict:
    """The estimator's options over its record's defaults; unknown keys are a :class:`ConfigError`."""
    defaults = REGISTRY[name].defaults
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"estimator {name!r} has no option(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(defaults)) or 'none'})")
    return {**defaults, **options}


def _number(name: str, option: str, value, kind=float, low=None, high=None, low_open=False):
    """``value`` as ``kind`` within [low, high] (or (low, high] with ``low_open``), else a one-line ConfigError."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and kind is int:
        ok = int(value) == value
    if ok:
        value = kind(value)
        ok = value == value and (low is None or (value > low if low_open else value >= low)) \
            and (high is None or value <= high)
    if not ok:
        bound = "" if low is None else (f" > {low}" if low_open else f" >= {low}")
        bound += "" if high is None else f" and <= {high}"
        raise ConfigError(f"estimator {name!r}: option {option} must be {'an integer' if kind is int else 'a number'}"
                          f"{bound} (got {value!r})")
    return value


def _with_y_infer(guide: Callable, infer: Callable[[tuple], dict]) -> Callable:
    """``guide`` with ``infer(args)`` attached to its latent ``y`` site (via ``poutine.infer_config``)."""
    def wrapped(*args, **kwargs):
        extra = infer(args)

        def config_fn(site):
            return extra if site["name"] == "y" and not site["is_observed"] else {}

        return poutine.infer_config(guide, config_fn)(*args, **kwargs)

    return wrapped


#: name of the decaying-average baseline Pyro keeps in the param store for site y
_AVG_PARAM = "__baseline_avg_downstream_cost_y"


def _trace_avg(ss: SSVAE, options: dict) -> Objective:
    o = _options("trace-avg", options)
    o["beta"] = _number("trace-avg", "beta", o["beta"], low=0, high=0.999)

    def infer(args):
        # Pyro keeps one running average per position of the plate, with the shape of the
        # first batch; mini-batches are shuffled (and the last one may be smaller), so pool
        # it to its batch mean, broadcast to this batch: one scalar decaying average.
        store = pyro.get_param_store()
        if _AVG_PARAM in store:
            avg = store[_AVG_PARAM].detach()
            store[_AVG_PARAM] = avg.mean().expand(args[0].shape[:1]).clone()
        return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": o["beta"]}}

    return Objective(ss.model, _with_y_infer(ss.guide, infer), TraceGraph_ELBO(max_plate_nesting=1))


class _Baseline(nn.Module):
    """b(x): an MLP ``input -> hidden -> 1``, output squeezed to the batch shape."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.net = MLP(input_size, [hidden], 1)

    def forward(self, xs):
        return self.net(xs).squeeze(-1)


def _trace_bx(ss: SSVAE, options: dict) -> Objective:
    o = _options("trace-bx", options)
    device = next(ss.parameters()).device
    baseline = _Baseline(ss.input_size, int(o["hidden"])).to(device)

    def infer(args):
        return {"baseline": {"nn_baseline": baseline, "nn_baseline_input": args[0]}}

    guide = _with_y_infer(ss.guide, infer)

    def nvil_guide(xs, ys=None):
        pyro.module("nvil_baseline", baseline)  # so that SVI's optimiser trains b(x)
        return guide(xs, ys)

    obj = Objective(ss.model, nvil_guide, TraceGraph_ELBO(max_plate_nesting=1), modules={"nvil_baseline": baseline})
    obj.baseline = baseline  # for inspection; not an SS-VAE parameter group
    return obj


def _trace_k(ss: SSVAE, options: dict) -> Objective:
    o = _options("trace-k10", options)
    o["k"] = _number("trace-k10", "k", o["k"], int, low=1)
    return Objective(ss.model, ss.guide, Trace_ELBO(num_particles=o["k"], vectorize_particles=True,
                                                    max_plate_nesting=1))


def _gumbel(straight_through: bool):
    name = "gumbel-st" if straight_through else "gumbel"

    def build(ss: SSVAE, options: dict) -> Objective:
        o = _options(name, options)
        schedule = TemperatureSchedule(_number(name, "tau0", o["tau0"], low=0, low_open=True),
                                       _number(name, "tau_min", o["tau_min"], low=0, low_open=True),
                                       _number(name, "rate", o["rate"], low=0),
                                       _number(name, "every", o["every"], int, low=1))
        relax = RelaxLatent(schedule(0), straight_through=straight_through)

        def hook(step: int) -> None:
            relax.temperature = schedule(step)

        obj = Objective(relax(ss.model), relax(ss.guide), Trace_ELBO(max_plate_nesting=1), step_hook=hook)
        obj.relax, obj.schedule = relax, schedule  # for inspection and tests
        return obj

    return build


def _rb_topk(name: str):
    """The builder of an rb-topk variant (each registered variant has its own defaults of k and baseline)."""
    def build(ss: SSVAE, options: dict) -> Objective:
        o = _options(name, options)
        top = _number(name, "k", o["k"], int, low=1, high=ss.num_classes)
        if not isinstance(o["baseline"], bool):
            raise ConfigError(f"estimator {name!r}: option baseline must be true or false (got {o['baseline']!r})")
        return Objective(ss.model, ss.guide, RaoBlackwellTopK(k=top, site="y", max_plate_nesting=1,
                                                              baseline=o["baseline"]))

    return build


def _rloo(ss: SSVAE, options: dict) -> Objective:
    o = _options("rloo", options)
    k = _number("rloo", "k", o["k"], int, low=2)
    return Objective(ss.model, ss.guide, LeaveOneOut(k=k, site="y", max_plate_nesting=1))


def _nvil(ss: SSVAE, options: dict) -> Objective:
    o = _options("nvil", options)
    hidden = _number("nvil", "hidden", o["hidden"], int, low=1)
    alpha = _number("nvil", "alpha", o["alpha"], low=0, high=0.999)
    device = next(ss.parameters()).device
    baseline = _Baseline(ss.input_size, hidden).to(device)
    loss = NVIL(baseline, alpha=alpha, name="nvil_baseline", site="y", max_plate_nesting=1)
    lrs = None
    if o["baseline_lr"] is not None:
        lrs = {"nvil_baseline": _number("nvil", "baseline_lr", o["baseline_lr"], low=0, low_open=True)}
    obj = Objective(ss.model, ss.guide, loss, lr_by_module=lrs, modules={loss.name: baseline})
    obj.baseline = baseline  # for inspection; not an SS-VAE parameter group
    return obj


def _unordered_set(ss: SSVAE, options: dict) -> Objective:
    o = _options("unordered-set", options)
    k = _number("unordered-set", "k", o["k"], int, low=2, high=ss.num_classes)
    return Objective(ss.model, ss.guide, UnorderedSet(k=k, site="y", max_plate_nesting=1))


REGISTRY: Dict[str, Estimator] = {}


def register(est: Estimator) -> Estimator:
    if est.name in REGISTRY:
        raise ValueError(f"estimator {est.name!r} registered twice")
    REGISTRY[est.name] = est
    return est


#: step weights: results/reference/quick-cpu/timing.csv (``Estimator.step_weight``); enum-seq's from the
#: smoke run's timing.csv (2.3x enum), which quick leaves it out of
register(Estimator(
    "trace", "sample y ~ q(y|x); score-function (REINFORCE) gradient via Trace_ELBO", _trace,
    pyro_variant="first variant", family="score function", counterpart="unsup-sampled", step_weight=0.27))
register(Estimator(
    "enum", "sum y out exactly: config_enumerate(parallel) + TraceEnum_ELBO", _enum("enum", "parallel"),
    pyro_variant="second variant", family="enumeration", counterpart="unsup-enum", particles=None,
    step_weight=1.0))
register(Estimator(
    "enum-seq", "sum y out exactly, one label value at a time: config_enumerate(sequential)",
    _enum("enum-seq", "sequential"), family="enumeration", counterpart="unsup-enum-seq", particles=None,
    step_weight=2.3))
register(Estimator(
    "enum-k10", "sum y out exactly, averaged over k=10 vectorised z draws: enum without most of its z noise",
    _enum_k, family="enumeration", defaults={"k": 10}, particles=100, labeled_particles=10,
    # its step weight: 7.0 x enum's unlabeled step, timed beside it in one process (bench/regress/runner.py,
    # 18 alternating steps each, batch 200, 1 thread; the machine was busy: a ratio, not a time)
    step_weight=7.0,
    no_counterpart_reason="TraceEnum_ELBO's vectorised particles (k enumerated steps at once)"))
register(Estimator(
    "baseline", "supervised-only classifier: q(y|x) trained by cross-entropy on the labeled images",
    _baseline, kind="supervised", pyro_variant="baseline classifier", family="supervised only",
    counterpart="baseline", particles=0, step_weight=0.05))
register(Estimator(
    "trace-avg", "score function with a decaying-average baseline (beta 0.95) via TraceGraph_ELBO",
    _trace_avg, stateful=True, family="score function", defaults={"beta": 0.95}, step_weight=0.45,
    no_counterpart_reason="TraceGraph_ELBO's baseline bookkeeping is the cost being measured"))
register(Estimator(
    "trace-bx", "score function with a neural baseline b(x) (input-100-1 MLP) trained by squared error via "
    "TraceGraph_ELBO: no centring, no variance normalisation (Mnih & Gregor's NVIL is `nvil`)",
    _trace_bx, stateful=True, family="score function", defaults={"hidden": 100}, step_weight=0.45,
    no_counterpart_reason="TraceGraph_ELBO's baseline bookkeeping is the cost being measured"))
register(Estimator(
    "trace-k10", "score function averaged over k=10 vectorised particles (as many decoder passes as enum)",
    _trace_k, family="score function", defaults={"k": 10}, particles=10, labeled_particles=10, step_weight=0.99,
    no_counterpart_reason="Trace_ELBO's vectorised particles (k sampled steps at once)"))
register(Estimator(
    "gumbel", "Gumbel-softmax relaxation of y in model and guide, temperature annealed 1 -> 0.5 (biased)",
    _gumbel(False), unbiased=False, family="relaxation",
    defaults={"tau0": 1.0, "tau_min": 0.5, "rate": 3e-5, "every": 2000},
    search={"schedule": [{"tau0": 1.0, "tau_min": 0.5}, {"tau0": 0.5, "tau_min": 0.5}]}, step_weight=0.27,
    no_counterpart_reason="a different (relaxed) objective whose densities are torch's"))
register(Estimator(
    "gumbel-st", "straight-through Gumbel-softmax: hard y forward, relaxed gradient, annealed (biased)",
    _gumbel(True), unbiased=False, family="relaxation",
    defaults={"tau0": 1.0, "tau_min": 0.5, "rate": 3e-5, "every": 2000},
    search={"schedule": [{"tau0": 1.0, "tau_min": 0.5}, {"tau0": 0.5, "tau_min": 0.5}]}, step_weight=0.26,
    no_counterpart_reason="a different (relaxed) objective whose densities are torch's"))
register(Estimator(
    "rb-topk", "Rao-Blackwellised (Liu et al. 2019): sum the k=1 most probable labels, sample one of the rest "
    "(score term baselined by the summed labels' mean)",
    _rb_topk("rb-topk"), family="Rao-Blackwell", defaults={"k": 1, "baseline": True}, counterpart="unsup-rb-topk",
    particles=2, step_weight=0.36))
register(Estimator(
    "rb-top3", "rb-topk with k=3: sum the 3 most probable labels, sample one of the rest (baselined); "
    "4 decoder passes", _rb_topk("rb-top3"), family="Rao-Blackwell", defaults={"k": 3, "baseline": True},
    counterpart="unsup-rb-top3", particles=4, step_weight=0.54))
register(Estimator(
    "rb-topk-plain", "Liu et al.'s plain Rao-Blackwellised estimator, k=1, no baseline on the tail's score term",
    _rb_topk("rb-topk-plain"), family="Rao-Blackwell", defaults={"k": 1, "baseline": False},
    counterpart="unsup-rb-topk-plain", particles=2, step_weight=0.35))
register(Estimator(
    "rloo", "REINFORCE with k=10 samples and the leave-one-out baseline (Kool et al. 2019): "
    "enum's decoder passes", _rloo, family="score function", defaults={"k": 10}, counterpart="unsup-rloo",
    particles=10, step_weight=0.98))
register(Estimator(
    "nvil", "NVIL (Mnih & Gregor 2014): input-dependent baseline (own lr), running-mean centring and "
    "variance normalisation of the learning signal", _nvil, stateful=True,
    unbiased=False,  # the normalisation divides encoder_y's expected gradient by the running s (exact when s <= 1)
    family="score function", defaults={"hidden": 100, "alpha": 0.8, "baseline_lr": None},
    search={"baseline_lr": [4.2e-4, 4.2e-3]}, step_weight=0.31,
    no_counterpart_reason="a sampled step plus a baseline MLP and running statistics kept in the param store "
    "between steps: a twin would have to copy that state machine, not a formula"))
register(Estimator(
    "unordered-set", "Kool et al. 2020's unordered set estimator: k=4 labels drawn without replacement "
    "(Gumbel-top-k), weighted by p(s)R(S,s), with its built-in baseline; 4 decoder passes", _unordered_set,
    family="score function", defaults={"k": 4}, particles=4,
    # not in quick-cpu's timing.csv yet: rb-top3's 0.54 x unordered-set / rb-top3 measured on one CPU thread
    # (batch 200, 784-500-50, median of 36 steps each, 2026-12-04): 77.0 ms / 76.4 ms
    step_weight=0.54,
    no_counterpart_reason="none written yet: a twin is a loss in ssvae/reference.py and a test, beyond the "
    "estimator's two files; its step is paired with the yardstick"))


def get_estimator(name: str) -> Estimator:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown estimator {name!r}: choose from {', '.join(REGISTRY)}") from None


def validate(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every field checked, the estimator's name among them (:meth:`RunConfig.validate` checks the
    rest): the first bad one raises :class:`ConfigError` with a one-line message."""
    get_estimator(cfg.estimator)
    return cfg.validate()


def names(kind: str = None) -> List[str]:
    return [n for n, e in REGISTRY.items() if kind is None or e.kind == kind]
