"""The configuration of one training run.

A run is a pure function of its :class:`RunConfig` (plus the data it reads, identified
by its sha256): same config, same seed, same machine, same numbers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

from .errors import ConfigError

#: Pyro's split: the first 50,000 MNIST training images train, the last 10,000 validate.
TRAIN_SIZE = 50_000
VALID_SIZE = 10_000
#: MNIST's test set
TEST_SIZE = 10_000
NUM_CLASSES = 10


def resolve_labels(labels: Optional[int] = None, label_fraction: Optional[float] = None) -> int:
    """The number of labeled training images, from a count or a fraction of the 50,000.

    A fraction is rounded to the nearest multiple of 10 (the subset is class-balanced).
    """
    if label_fraction is not None:
        if labels is not None:
            raise ConfigError("give either a label count or a label fraction, not both")
        if not (0.0 < label_fraction <= 1.0):
            raise ConfigError(f"label fraction {label_fraction} is outside (0, 1]: use e.g. 0.02 for 1000 labels")
        labels = int(round(label_fraction * TRAIN_SIZE / NUM_CLASSES)) * NUM_CLASSES
        if labels == 0:
            raise ConfigError(
                f"label fraction {label_fraction} gives fewer than 10 labeled images: use at least 0.0002")
    if labels is None:
        raise ConfigError("no label count given")
    if isinstance(labels, bool) or int(labels) != labels:
        raise ConfigError(f"label count {labels!r} is not an integer")
    labels = int(labels)
    if labels <= 0:
        raise ConfigError(f"label count {labels} must be positive (a multiple of 10, at most {TRAIN_SIZE})")
    if labels % NUM_CLASSES:
        raise ConfigError(f"label count {labels} is not a multiple of 10: the labeled subset has "
                          f"labels/10 images per digit (try {labels - labels % 10 or 10})")
    if labels > TRAIN_SIZE:
        raise ConfigError(f"label count {labels} is above the {TRAIN_SIZE} training images")
    return labels


#: Training loops (see ssvae/train.py's docstring): ours, Pyro's ``ss_vae_M2.py`` exactly, and Kingma's and
#: Liu et al.'s joint step (a labeled batch in every step, one loss, one Adam step).
PROTOCOLS = ("bench", "pyro", "joint")
#: Run fields added after records existed, with their defaults: written (and hashed) only where they differ
#: from the default, so every earlier record keeps its identity.
SPARSE_FIELDS = {"sup_batch_size": None, "sup_weight": 1.0, "weight_decay": 0.0, "patience": None}
#: The image counts Pyro's script asserts the batch size divides (training, validation, test).
PYRO_DIVIDES = {"training": 50_000, "validation": 10_000, "test": 10_000}


def check_protocol(cfg: "RunConfig") -> None:
    """Raise a one-line :class:`ConfigError` for an unknown protocol or a batch size Pyro's loop refuses."""
    protocol = cfg.protocol
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    if protocol != "joint":
        for name in ("sup_batch_size", "sup_weight"):
            if getattr(cfg, name) != SPARSE_FIELDS[name]:
                raise ConfigError(f"{name} sets the joint step's labeled batch: it needs protocol joint "
                                  f"(got protocol {protocol})")
    if protocol == "pyro":
        if cfg.labels % cfg.batch_size:
            divisors = [b for b in range(cfg.batch_size, 0, -1) if cfg.labels % b == 0 and
                        all(n % b == 0 for n in PYRO_DIVIDES.values())]
            raise ConfigError(f"protocol pyro needs the batch size to divide the label count: batch size "
                              f"{cfg.batch_size} does not divide {cfg.labels} labels (try {divisors[0]})")
        for what, n in PYRO_DIVIDES.items():
            if n % cfg.batch_size:
                raise ConfigError(f"protocol pyro needs the batch size to divide the {n} {what} images "
                                  f"(got {cfg.batch_size})")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the outcome of one training run.

    Defaults are those of Pyro's ``examples/vae/ss_vae_M2.py``.
    """

    estimator: str = "enum"
    aux: bool = False
    labels: int = 3000
    seed: int = 0
    epochs: int = 50
    batch_size: int = 200
    lr: float = 0.00042
    beta1: float = 0.9
    z_dim: int = 50
    hidden: Tuple[int, ...] = (500,)
    aux_multiplier: float = 46.0
    #: Truncate every epoch to its first N mini-batches (smoke runs); None runs whole epochs.
    steps_per_epoch: Optional[int] = None
    device: str = "cpu"
    #: Estimator-specific options (e.g. ``{"k": 1}`` for rb-topk); must be JSON-able.
    options: Tuple[Tuple[str, object], ...] = field(default_factory=tuple)
    #: Training loop: "bench" (ours), "pyro" (Pyro's ss_vae_M2.py exactly) or "joint" (a labeled batch in
    #: every step, one loss); see ssvae.train.
    protocol: str = "bench"
    #: protocol "joint": labeled images per step (None: ``min(batch_size, labels)``), cycled through the
    #: labeled set in fresh shuffles, and the weight of their terms (ELBO with y observed, and the auxiliary
    #: loss) beside the unlabeled batch's ELBO in the one loss.
    sup_batch_size: Optional[int] = None
    sup_weight: float = 1.0
    #: Adam's L2 weight decay on every parameter (0: none, Pyro's default)
    weight_decay: float = 0.0
    #: Early stopping on validation accuracy: end the run once this many epochs have passed since its best
    #: (None: every epoch, as Pyro's script). ``epochs`` is then a cap; the reported test accuracy is still
    #: the one at the best validation epoch, which a stopped run has already passed by ``patience`` epochs.
    patience: Optional[int] = None

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        object.__setattr__(self, "labels", resolve_labels(self.labels))

    def validate(self) -> "RunConfig":
        """Raise :class:`ConfigError` with a one-line message for any invalid field but the estimator's name,
        which the registry checks (:func:`ssvae.estimators.validate`: this and the name; config stays free of
        torch and Pyro, and the registry's modules import this one)."""
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1 (got {self.epochs})")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1 (got {self.batch_size})")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"steps per epoch must be at least 1 (got {self.steps_per_epoch})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a positive finite number (got {self.lr})")
        for name in ("sup_batch_size", "patience"):  # None, or a whole number >= 1
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1):
                raise ConfigError(f"{name} must be an integer >= 1 (got {v!r})")
        if not (math.isfinite(self.sup_weight) and self.sup_weight > 0):
            raise ConfigError(f"sup_weight must be a positive finite number (got {self.sup_weight})")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a finite number >= 0 (got {self.weight_decay})")
        if self.z_dim < 1 or not self.hidden or min(self.hidden) < 1:
            raise ConfigError("network sizes must be positive")
        check_device(self.device)
        check_protocol(self)
        return self

    @property
    def option_dict(self) -> dict:
        return dict(self.options)

    def to_dict(self) -> dict:
        """The fields as JSON types; a field of :data:`SPARSE_FIELDS` only where it is not its default."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["options"] = dict(self.options)
        for name, default in SPARSE_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        if "options" in d and isinstance(d["options"], dict):
            d["options"] = tuple(sorted(d["options"].items()))
        return cls(**d)

    def key(self) -> str:
        """A short stable hash of the config (device included)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]



#: Pyro's ``ss_vae_M2.py`` defaults as one object (learning rate, aux multiplier, sizes...): the one home of
#: every run default; the grid, the command line, tuning and the hand-written reference read it.
DEFAULT_RUN = RunConfig()


def sci(x: float) -> str:
    """A number as the docs write it: 4.2e-4 (not 4.2e-04), 3e-4, 1.26e-3."""
    mantissa, exp = f"{x:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"

def check_device(device: str) -> str:
    """Validate a device string; ``cuda`` without a visible GPU is a :class:`ConfigError`."""
    import torch

    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if ":" in device and not device.split(":", 1)[1].isdigit():
            raise ConfigError(f"--device {device}: the GPU index must be a number, e.g. cuda:0")
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} requested but no CUDA GPU is visible to torch "
                              f"{torch.__version__}: use --device cpu")
        if ":" in device:
            if int(device.split(":", 1)[1]) >= torch.cuda.device_count():
                raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
        return device
    raise ConfigError(f"unknown device {device!r}: use cpu or cuda")
