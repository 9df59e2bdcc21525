"""Presets (data files in ``bench/presets/``) and their expansion into tasks.

A grid is estimators x auxiliary loss x label counts x seeds (+ the supervised baseline per
label count and seed). It expands into three kinds of task, each a pure function of its spec:

* ``train``  -- one cell: train one configuration, probe its own gradient variance at the
  checkpoints, save generated digits. Result: ``runs/<cell>.json``.
* ``common`` -- per (labels, seed): follow the enum + aux trajectory and, at each checkpoint,
  measure every estimator's gradient at those same parameters. Result: ``probes/<id>.json``.
* ``timing`` -- per device: median time per step of every estimator and step kind.
  Result: ``probes/<id>.json``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ssvae import RunConfig, resolve_labels
from ssvae.config import DEFAULT_RUN, SPARSE_FIELDS, TRAIN_SIZE
from ssvae.errors import ConfigError
from ssvae.estimators import REGISTRY, get_estimator, names, validate
from ssvae.model import SSVAE
from ssvae.relax import TemperatureSchedule
from ssvae.train import epoch_schedule

from ..core.schema import (GRID_FIELDS, GRID_SCHEMA, PROBE_DEFAULTS, PROBE_FIELDS, PROBE_SCHEMA, REQUIRED_FIELDS,
                     SchemaError, cell_id as _cell_id, check_field, common_id, finite_values, parse_setting_id,
                     setting_id, timing_id)

from . import tune as tunemod

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
__all__ = ["GRID_FIELDS", "PROBE_FIELDS", "PROBE_DEFAULTS", "Grid", "load_preset", "make_grid", "expand",
           "cell_id", "preset_names", "check_fields", "train_configs"]


def preset_names() -> List[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name: str) -> dict:
    """A preset by name (``bench/presets/<name>.toml``) or by the path of a TOML file."""
    path = Path(name) if name.endswith(".toml") else PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        if name.endswith(".toml"):
            raise ConfigError(f"preset file {name} does not exist")
        raise ConfigError(f"unknown preset {name!r}: choose from {', '.join(preset_names())} or a .toml file")
    try:
        with open(path, "rb") as fh:
            preset = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {path.name}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"preset {path.name} cannot be read ({exc.__class__.__name__})") from None
    unknown = set(preset) - GRID_FIELDS
    if unknown:
        raise ConfigError(f"preset {path.stem}: unknown field(s) {', '.join(sorted(unknown))}")
    preset["name"] = path.stem
    return preset


def check_fields(spec: dict) -> dict:
    """Every field of a preset (after overrides) checked against its type and range; one line on error.

    Returns a copy with ints of float fields made floats. Fields that are absent keep their defaults. Every
    number of the estimators' options and tuning candidates is finite.
    """
    out = dict(spec)
    try:
        finite_values("options", out.get("options") or {})
        finite_values("tune", out.get("tune") or {})
        for name, f in GRID_SCHEMA.items():
            if out.get(name) is not None:
                out[name] = check_field(name, f, out[name])
        probe = out.get("probe") or {}
        if not isinstance(probe, dict):
            raise SchemaError(f"probe must be a table of probe settings (got {probe!r})")
        unknown = set(probe) - PROBE_FIELDS
        if unknown:
            raise SchemaError(f"unknown probe field(s) {', '.join(sorted(unknown))}: "
                              f"known {', '.join(sorted(PROBE_FIELDS))}")
        out["probe"] = {k: check_field(f"probe.{k}", PROBE_SCHEMA[k], v) for k, v in probe.items()}
    except SchemaError as exc:
        raise ConfigError(str(exc)) from None
    return out


@dataclass
class Grid:
    name: str
    estimators: List[str]
    aux: List[bool]
    baseline: bool
    labels: List[int]
    seeds: List[int]
    epochs: int
    device: str = "cpu"
    steps_per_epoch: Optional[int] = None
    batch_size: int = DEFAULT_RUN.batch_size
    lr: float = DEFAULT_RUN.lr
    z_dim: int = DEFAULT_RUN.z_dim
    hidden: List[int] = field(default_factory=lambda: list(DEFAULT_RUN.hidden))
    aux_multiplier: float = DEFAULT_RUN.aux_multiplier
    probe: Dict = field(default_factory=lambda: dict(PROBE_DEFAULTS))
    description: str = ""
    #: cells run at a time by default (an execution hint: results do not depend on it)
    workers: int = 1
    #: estimator options, per estimator: ``{"rb-topk": {"k": 3}}`` (TOML: ``[options.rb-topk] k = 3``)
    options: Dict[str, Dict] = field(default_factory=dict)
    #: candidate values per estimator (``bench/run/tune.py``): each combination is its own cell
    tune: Dict = field(default_factory=dict)
    #: a search at the reporting budget (``bench/run/search.py``), normalised by ``tune.check_search``
    search: Dict = field(default_factory=dict)
    #: the training loop: "bench" (ours) or "pyro" (Pyro's ss_vae_M2.py loop exactly; ssvae/train.py)
    protocol: str = "bench"
    #: protocol joint's labeled batch and weight, Adam's weight decay, and early stopping on validation accuracy
    #: (``patience`` epochs since a cell's best; ``epochs`` is then a cap) (ssvae.config.SPARSE_FIELDS)
    sup_batch_size: Optional[int] = None
    sup_weight: float = 1.0
    weight_decay: float = 0.0
    patience: Optional[int] = None

    def to_dict(self) -> dict:
        """The grid as env.json keeps it; a field of ``SPARSE_FIELDS`` only where it is not its default."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items()
                if not (k in SPARSE_FIELDS and v == SPARSE_FIELDS[k]) and not (k == "search" and not v)}


def make_grid(preset: dict, overrides: Optional[dict] = None) -> Grid:
    """Combine a preset with command-line overrides (``None`` values are ignored) and validate."""
    spec = dict(preset)
    for k, v in (overrides or {}).items():
        if v is not None:
            spec[k] = v
    for name, alternatives in REQUIRED_FIELDS.items():  # the fields without a default
        if all(spec.get(a) is None for a in alternatives):
            raise ConfigError(f"preset {spec.get('name', 'custom')} sets no {name}: add {name} = ... to it "
                              f"or give --{name}")
    spec = check_fields(spec)
    if spec.get("label_fractions") is not None:
        spec["labels"] = [resolve_labels(None, f) for f in spec["label_fractions"]]
        if len(set(spec["labels"])) < len(spec["labels"]):
            raise ConfigError(f"label fractions {spec['label_fractions']} give the same label count twice")
    labels = [resolve_labels(v) for v in spec["labels"]]
    ests = spec.get("estimators", "all")
    if ests == "all" or ests == ["all"]:
        ests = names("ssvae")
    for e in ests:
        if get_estimator(e).kind != "ssvae":
            raise ConfigError(f"estimator {e!r} is not a semi-supervised estimator (use --baseline)")
    seeds = spec.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    probe = dict(PROBE_DEFAULTS)
    probe.update(spec.get("probe", {}))
    for e in probe.get("probed_only") or []:
        if get_estimator(e).kind != "ssvae":  # an unknown name fails in get_estimator: one line, the known ones
            raise ConfigError(f"probe.probed_only: {e!r} is not a semi-supervised estimator")
    options = spec.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigError("options must map an estimator to its options, e.g. options.rb-topk.k=3")
    if options:  # unknown or bad options fail here, in one line, not in every cell
        tiny = SSVAE(input_size=4, z_dim=1, hidden=(2,))
        for key, o in options.items():
            est = (parse_setting_id(key) or {}).get("estimator", key)  # an estimator, or one setting of it
            get_estimator(est).build(tiny, _estimator_options(o))
            _run_field(key, o, "lr", 1.0)
            _run_field(key, o, "aux_multiplier", 1.0)
    grid = Grid(name=spec.get("name", "custom"), estimators=list(ests), aux=list(spec.get("aux", [False, True])),
                baseline=bool(spec.get("baseline", True)), labels=labels, seeds=seeds, epochs=int(spec["epochs"]),
                device=spec.get("device", "cpu"), steps_per_epoch=spec.get("steps_per_epoch"),
                batch_size=int(spec.get("batch_size", DEFAULT_RUN.batch_size)),
                lr=float(spec.get("lr", DEFAULT_RUN.lr)), z_dim=int(spec.get("z_dim", DEFAULT_RUN.z_dim)),
                hidden=list(spec.get("hidden", DEFAULT_RUN.hidden)),
                aux_multiplier=float(spec.get("aux_multiplier", DEFAULT_RUN.aux_multiplier)), probe=probe,
                description=spec.get("description", ""), workers=int(spec.get("workers", 1)),
                options={e: dict(o) for e, o in sorted(options.items())},
                tune=tunemod.check_tune(spec.get("tune") or {}, list(ests)),
                search=tunemod.check_search(spec["search"], list(ests)) if spec.get("search") else {},
                protocol=spec.get("protocol", "bench"),
                **{k: spec.get(k, default) for k, default in SPARSE_FIELDS.items()})
    if grid.search and grid.patience is not None:  # its trials run epoch by epoch under the pruner
        raise ConfigError("patience stops a grid's cells early; a search prunes its own trials: leave it out")
    for cfg in train_configs(grid):
        validate(cfg)
    return grid


def settings(grid: Grid) -> List[Tuple[str, bool, int]]:
    """The grid's (estimator, aux, labels) settings, the supervised baseline aside."""
    return [(est, aux, labels) for labels in grid.labels for est in grid.estimators for aux in grid.aux]


def without_choice(grid: Grid, chosen: Dict[str, Dict]) -> List[str]:
    """The settings of ``grid`` a choice file (estimator or setting -> values) chooses nothing for."""
    return [setting_id(e, a, l) for e, a, l in settings(grid) if e not in chosen and setting_id(e, a, l) not in chosen]


def cell_id(cfg: RunConfig) -> str:
    return _cell_id(cfg.estimator, cfg.aux and get_estimator(cfg.estimator).kind == "ssvae", cfg.labels, cfg.seed)


def _estimator_options(options: dict) -> dict:
    """An estimator's options without the run's fields (a per-estimator ``lr`` or ``aux_multiplier`` sets the
    run's)."""
    return {k: v for k, v in options.items() if k not in tunemod.RUN_FIELDS}


def _run_field(where: str, options: dict, key: str, default: float) -> float:
    """A run field an estimator's (or a setting's) options may set, ``lr`` or ``aux_multiplier`` (else the
    grid's): a positive finite number."""
    v = options.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ConfigError(f"options.{where}.{key} must be a positive number (got {v!r})")
    if not math.isfinite(v):
        raise ConfigError(f"options.{where}.{key} must be finite (got {v!r})")
    return float(v)


def _config(grid: Grid, extra: Optional[dict] = None, **kw) -> RunConfig:
    """One run: the grid's fields, then its options for the estimator, then for the setting (``[options.
    "gumbel+aux_L3000"]``: a tuning choice per setting), then ``extra`` (a tuning grid's candidate)."""
    est = kw["estimator"]
    options = {**grid.options.get(est, {}),
               **grid.options.get(setting_id(est, kw.get("aux", False), kw["labels"]), {}), **(extra or {})}
    cfg = RunConfig(epochs=grid.epochs, steps_per_epoch=grid.steps_per_epoch, batch_size=grid.batch_size,
                    lr=_run_field(est, options, "lr", grid.lr), z_dim=grid.z_dim, hidden=tuple(grid.hidden),
                    aux_multiplier=_run_field(est, options, "aux_multiplier", grid.aux_multiplier),
                    device=grid.device, protocol=grid.protocol,
                    **{k: getattr(grid, k) for k in SPARSE_FIELDS},
                    options=_estimator_options(options), **kw)
    return dataclasses.replace(cfg, options=_budget_options(cfg))


def _budget_options(cfg: RunConfig) -> dict:
    """The estimator's options, a temperature schedule's ``rate``/``every`` set from the run's budget.

    A relaxation's temperature anneals to its floor by half of the run's steps
    (:meth:`ssvae.relax.TemperatureSchedule.for_budget`), unless the options set ``rate`` or ``every``.
    """
    options = cfg.option_dict
    if not _has_schedule(cfg.estimator) or "rate" in options or "every" in options:
        return options
    steps = cfg.epochs * _steps_per_epoch(cfg)
    sched = TemperatureSchedule.for_budget(steps, float(options.get("tau0", 1.0)), float(options.get("tau_min", 0.5)))
    return {**options, "rate": sched.rate, "every": sched.every}


@functools.lru_cache(maxsize=None)
def _has_schedule(estimator: str) -> bool:
    return hasattr(get_estimator(estimator).build(SSVAE(input_size=4, z_dim=1, hidden=(2,)), {}), "schedule")


def resolve_checkpoints(value, cfg: RunConfig) -> List[int]:
    """A probe's checkpoints as global steps: a list, ``"epochs"`` or ``"last"`` (see PROBE_DEFAULTS)."""
    spe = _steps_per_epoch(cfg)
    if value == "epochs":
        return [e * spe for e in range(cfg.epochs + 1)]
    if value == "last":
        return [cfg.epochs * spe]
    return sorted(set(int(c) for c in value))


def _with_options(task: dict, grid: Grid, estimator: str) -> dict:
    """A probe task of one estimator carries that estimator's options (when it has any; ``lr`` sets the
    run's learning rate, not an option of the estimator)."""
    options = _estimator_options(grid.options.get(estimator, {}))
    if options:
        task["options"] = {estimator: options}
    return task


def train_configs(grid: Grid) -> List[RunConfig]:
    cfgs = []
    for labels in grid.labels:
        for seed in grid.seeds:
            for est in grid.estimators:
                for extra in tunemod.candidates(grid.tune, est):
                    for aux in grid.aux:
                        cfgs.append(_config(grid, extra, estimator=est, aux=aux, labels=labels, seed=seed))
            if grid.baseline:
                cfgs.append(_config(grid, estimator="baseline", aux=False, labels=labels, seed=seed))
    return cfgs


def expand(grid: Grid) -> List[dict]:
    """The task specs of a grid, in run order: timing probes, common probes, then cells.

    The common probes of each (labels, seed) start with the estimators that keep a trained baseline
    (``Estimator.stateful``): they train the trajectory anyway and write its cache, which the others
    then read, rather than two stateless probes starting together and both training it.

    Probes are split per estimator (``timing_<device>_<est>``, ``common_L<labels>_s<seed>_<est>``): a
    run of a subset of estimators never replaces another estimator's probe. A cell's spec holds the
    probe settings it uses (:data:`bench.core.schema.CELL_PROBE_FIELDS`) and no other, so changing a timing
    setting never retrains a cell.
    """
    probe = grid.probe
    probed = grid.estimators + [e for e in probe.get("probed_only") or [] if e not in grid.estimators]
    tasks: List[dict] = []
    for est in probed:
        tasks.append(_with_options({
            "kind": "timing", "id": timing_id(grid.device, est), "exclusive": probe["timing_alone"],
            "estimators": [est], "aux": grid.aux, "device": grid.device,
            "config": _config(grid, estimator="enum", aux=True, labels=max(grid.labels), seed=0).to_dict(),
            "warmup": probe["timing_warmup"], "steps": probe["timing_steps"],
        }, grid, est))
    if "enum" in REGISTRY:
        for labels in grid.labels:
            for seed in grid.seeds:
                cfg = _config(grid, estimator="enum", aux=True, labels=labels, seed=seed)
                steps_per_epoch = _steps_per_epoch(cfg)
                checkpoints = resolve_checkpoints(probe["checkpoints"], cfg)
                epochs = max(1, math.ceil(max(checkpoints) / steps_per_epoch))
                cfg = dataclasses.replace(cfg, epochs=epochs)
                for est in sorted(probed, key=lambda e: not REGISTRY[e].stateful):
                    task = _with_options({"kind": "common", "id": common_id(labels, seed, est),
                                          "config": cfg.to_dict(), "estimators": [est],
                                          "checkpoints": checkpoints, "n_samples": probe["variance_samples"],
                                          "reference_draws": probe["reference_draws"],
                                          "bootstrap": probe["bootstrap"], **_draws(probe)}, grid, est)
                    # the estimator is probed with the options of its own runs (the temperature a
                    # relaxation's own run had at each checkpoint: its schedule is set by the run's budget)
                    own = _config(grid, estimator=est, aux=True, labels=labels, seed=seed).option_dict
                    if own:
                        task["own_options"] = {est: own}
                    tasks.append(task)
    for cfg in train_configs(grid):
        own = probe["own_checkpoints"] if probe["own_checkpoints"] is not None else probe["checkpoints"]
        tasks.append({"kind": "train", "id": cell_id(cfg) + tunemod.cell_tag(grid.tune, cfg), "config": cfg.to_dict(),
                      "checkpoints": resolve_checkpoints(own, cfg), "n_samples": probe["variance_samples"],
                      "reference_draws": probe["reference_draws"], "bootstrap": probe["bootstrap"],
                      "samples_per_class": probe["samples_per_class"], **_draws(probe),
                      "evaluation": {k: probe[k] for k in ("elbo_images", "iwae_k", "iwae_images")}})
    return tasks


def _draws(probe: dict) -> dict:
    """The probe's ``draws`` setting as a task spec holds it: absent for the loop, so that the specs (and
    the identities) of tasks from before the setting existed stay what they were."""
    return {} if probe.get("draws", "loop") == "loop" else {"draws": probe["draws"]}


def _steps_per_epoch(cfg: RunConfig) -> int:
    n = len(epoch_schedule(cfg.labels, TRAIN_SIZE - cfg.labels, cfg.batch_size, TRAIN_SIZE, cfg.protocol))
    return min(n, cfg.steps_per_epoch or n)


def steps_per_epoch(cfg: RunConfig) -> int:
    """Optimisation steps in one epoch of ``cfg`` (truncated epochs included)."""
    return _steps_per_epoch(cfg)
