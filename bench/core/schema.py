"""The names the harness writes, said once (a leaf module: it imports nothing from ``bench``).

* the cell id, ``<estimator>[+aux]_L<labels>_s<seed>``: :func:`cell_id`, :func:`parse_cell_id`; a setting's,
  ``<estimator>[+aux]_L<labels>``: :func:`setting_id`;
* the task kinds and the id of each probe task (one per estimator, so a run of a subset of
  estimators never touches another estimator's probe);
* the statuses a result can have and those that count as finished;
* the step kinds of the timing and variance tables;
* the columns of the four CSV tables (results/README.md documents each one);
* the typed schema of a grid: every preset field and ``--set`` target with its type and range
  (:data:`GRID_SCHEMA`, :data:`PROBE_SCHEMA`), checked by :func:`check_field` before anything runs;
* the settings that make two grids two grids (:func:`grid_difference`);
* the typed shape of a result record (:func:`record_problem`): what ``bench.core.store.read_result`` accepts.

A field is ``Field(kind, minimum, ...)`` where ``kind`` is ``int``, ``float``, ``bool``, ``str`` or a
list of one of them; ``float`` fields must be finite, list fields non-empty and free of duplicates.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from ssvae.config import PROTOCOLS, SPARSE_FIELDS
from ssvae.statistics import COLUMNS as STAT_COLUMNS

#: a results folder's run description (grid, versions, machine, estimate), written by ``bench run``
ENV_FILE = "env.json"


@dataclass(frozen=True)
class Folder:
    """The files of one results folder, named in this one place: ``env.json`` (:data:`ENV_FILE`), ``runs/`` (a
    cell's record each, ``<cell>.json``), ``probes/`` (the gradient and timing probes' records), ``cache/`` (a
    cut-short cell's resume state), ``logs/`` (a task's output), the tables ``<name>.csv`` (:data:`TABLES`),
    and the report's ``tables/`` and ``plots/``; a search's state, Optuna's journal ``search.journal``."""

    root: Path
    RUNS, PROBES, CACHE, LOGS, TABLES, PLOTS = "runs", "probes", "cache", "logs", "tables", "plots"
    JOURNAL = "search.journal"

    env = property(lambda self: self.root / ENV_FILE)
    runs = property(lambda self: self.root / self.RUNS)
    probes = property(lambda self: self.root / self.PROBES)
    cache = property(lambda self: self.root / self.CACHE)
    logs = property(lambda self: self.root / self.LOGS)
    tables = property(lambda self: self.root / self.TABLES)
    plots = property(lambda self: self.root / self.PLOTS)
    journal = property(lambda self: self.root / self.JOURNAL)

    def records(self, kind: str) -> Path:
        """Where a task of ``kind`` writes its record: ``runs/`` for a cell (``train``), ``probes/`` otherwise."""
        return self.runs if kind == "train" else self.probes

    def table(self, name: str) -> Path:
        """A table of the folder, ``<name>.csv`` (``runs``, ``curves``, ``timing``, ``grad_variance``)."""
        return self.root / f"{name}.csv"

# -- tasks and statuses ----------------------------------------------------------------------------
# task kinds: bench.run.tasks.KINDS (how each runs and what it costs)
#: finished: reused by a rerun when the record's identity matches
DONE_STATUSES = ("ok", "diverged")
#: every status a cell can show in a table
STATUSES = ("ok", "diverged", "failed", "missing", "corrupt", "stale")
STEP_KINDS = ("sup", "unsup", "aux")

#: generated digits of a cell: samples/<cell> + this suffix, (10, n, 28, 28) uint8, one shared z per column
ANALOGY_SUFFIX = ".analogy.npy"

CELL_RE = re.compile(r"^(?P<estimator>[a-z0-9-]+)(?P<aux>\+aux)?_L(?P<labels>\d+)_s(?P<seed>\d+)$")
SETTING_RE = re.compile(r"^(?P<estimator>[a-z0-9-]+)(?P<aux>\+aux)?_L(?P<labels>\d+)$")


def setting_id(estimator: str, aux: bool, labels: int) -> str:
    """A setting, the cells of one variant at one label count: ``<estimator>[+aux]_L<labels>``."""
    return f"{estimator}{'+aux' if aux else ''}_L{int(labels)}"


def parse_setting_id(text: str) -> Optional[dict]:
    m = SETTING_RE.match(text)
    return {"estimator": m["estimator"], "aux": bool(m["aux"]), "labels": int(m["labels"])} if m else None


def cell_id(estimator: str, aux: bool, labels: int, seed: int) -> str:
    return f"{setting_id(estimator, aux, labels)}_s{int(seed)}"


def parse_cell_id(text: str) -> Optional[dict]:
    m = CELL_RE.match(text)
    if not m:
        return None
    return {"estimator": m["estimator"], "aux": bool(m["aux"]), "labels": int(m["labels"]), "seed": int(m["seed"])}


def common_id(labels: int, seed: int, estimator: str) -> str:
    return f"common_L{int(labels)}_s{int(seed)}_{estimator}"


def timing_id(device: str, estimator: str) -> str:
    return f"timing_{device.replace(':', '')}_{estimator}"


# -- the CSV tables --------------------------------------------------------------------------------
RUNS_COLUMNS = ["cell", "estimator", "aux", "labels", "seed", "device", "status", "test_acc_at_best_valid",
                "best_valid_acc", "best_epoch", "final_test_acc", "final_valid_acc", "epochs", "steps",
                "steps_per_epoch", "train_seconds", "seconds_per_epoch", "eval_seconds", "beside", "other_cpu_load", "flush_denormal", "protocol", "final_test_elbo",
                "elbo_images", "test_iwae", "iwae_k", "iwae_images", "data_sha256", "git_commit", "error"]
CURVES_COLUMNS = ["cell", "estimator", "aux", "labels", "seed", "device", "epoch", "global_step", "valid_acc",
                  "test_acc", "test_elbo", "loss_sup", "loss_unsup", "loss_aux", "elapsed_seconds"]
TIMING_COLUMNS = ["estimator", "aux", "device", "device_name", "step_kind", "batch_size", "n_steps", "median_ms",
                  "q1_ms", "q3_ms", "min_ms", "mean_ms", "threads", "ref_step", "ref_median_ms", "ref_q1_ms",
                  "ref_q3_ms", "pyro_overhead", "gflop", "matmul_gflops", "pct_of_matmul_peak", "peak_mb",
                  "peak_mb_method", "other_cpu_load"]
#: a task beside which other processes kept at least this many cores busy on average is contended
#: (its times are labelled so and never feed a verdict)
CONTENDED_LOAD = 0.25


def cores(load: float) -> str:
    """An ``other_cpu_load`` in words, as every page and log line says it: "1 core", "1.3 cores"."""
    text = f"{load:.2g}"
    return f"{text} core" if text == "1" else f"{text} cores"


#: a probe's keys, the statistics' columns (:data:`ssvae.statistics.COLUMNS`), the relaxation's temperature and
#: the updates a learned baseline had
VARIANCE_COLUMNS = ["estimator", "aux", "labels", "seed", "trajectory", "step", "param_group", "step_kind",
                    *STAT_COLUMNS, "temperature", "baseline_updates"]
TABLES: Dict[str, list] = {"runs": RUNS_COLUMNS, "curves": CURVES_COLUMNS, "timing": TIMING_COLUMNS,
                           "grad_variance": VARIANCE_COLUMNS}


# -- the typed schema of a grid ----------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    kind: type                       #: int, float, bool or str
    many: bool = False               #: a list of ``kind`` (non-empty, no duplicates)
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    above: Optional[float] = None    #: strictly greater than
    alt: Tuple = ()                  #: other accepted values (e.g. "all" for estimators)
    int_too: bool = False            #: also accept a single integer (seeds = N means 0..N-1)
    choices: Tuple = ()              #: the only values a string field accepts (empty: any string)
    optional: bool = False           #: may be absent

    def describe(self) -> str:
        what = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}[self.kind]
        if self.many:
            what = {int: "integers", float: "finite numbers", bool: "booleans", str: "strings"}[self.kind]
            what = f"a list of distinct {what}, e.g. " + {int: "[0, 1]", float: "[0.1, 0.2]",
                                                           bool: "[false, true]", str: '["enum"]'}[self.kind]
        return what


#: upper bounds: a value past them is a typo, not a grid (``--epochs 1e20`` would estimate 5e17 minutes)
MAX_EPOCHS, MAX_SEEDS, MAX_COUNT, MAX_LR = 100_000, 10_000, 1_000_000, 10.0
#: the fields a preset must set (or a flag give): name -> the fields that may stand for it
REQUIRED_FIELDS = {"labels": ("labels", "label_fractions"), "epochs": ("epochs",)}

GRID_SCHEMA: Dict[str, Field] = {
    "description": Field(str, optional=True),
    "estimators": Field(str, many=True, alt=("all",)),
    "aux": Field(bool, many=True),
    "baseline": Field(bool),
    "labels": Field(int, many=True),
    "label_fractions": Field(float, many=True, optional=True),  # range: ssvae.config.resolve_labels
    "seeds": Field(int, many=True, minimum=0, maximum=MAX_SEEDS, int_too=True),
    "epochs": Field(int, minimum=1, maximum=MAX_EPOCHS),
    "steps_per_epoch": Field(int, minimum=1, maximum=MAX_COUNT, optional=True),
    "batch_size": Field(int, minimum=1, maximum=MAX_COUNT),
    "lr": Field(float, above=0.0, maximum=MAX_LR),
    "z_dim": Field(int, minimum=1, maximum=MAX_COUNT),
    "hidden": Field(int, many=True, minimum=1, maximum=MAX_COUNT),
    "aux_multiplier": Field(float, minimum=0.0, maximum=MAX_COUNT),
    "workers": Field(int, minimum=1, maximum=1024),
    "protocol": Field(str, alt=PROTOCOLS),   # the training loop (ssvae.train: 'bench', Pyro's exact one, 'joint')
    # protocol joint: labeled images per step and their weight in the one loss; Adam's weight decay (any protocol)
    "sup_batch_size": Field(int, minimum=1, maximum=MAX_COUNT, optional=True),
    "sup_weight": Field(float, above=0.0, maximum=MAX_COUNT),
    "weight_decay": Field(float, minimum=0.0, maximum=MAX_LR),
    # early stopping: a cell ends once this many epochs have passed since its best validation accuracy
    "patience": Field(int, minimum=1, maximum=MAX_EPOCHS, optional=True),
}
#: ``options`` (per-estimator options) is checked by building each estimator; ``probe`` below; ``tune`` and
#: ``search`` by bench.run.tune
GRID_FIELDS = set(GRID_SCHEMA) | {"probe", "options", "tune", "search"}

PROBE_SCHEMA: Dict[str, Field] = {
    #: global steps, or "epochs" (step 0 and the end of every epoch) or "last" (the end of the run)
    "checkpoints": Field(int, many=True, minimum=0, alt=("epochs", "last")),
    #: the cells' own checkpoints (absent: the same as ``checkpoints``)
    "own_checkpoints": Field(int, many=True, minimum=0, alt=("epochs", "last"), optional=True),
    #: z draws averaged by the exact reference gradient; bootstrap resamples of the draws
    "reference_draws": Field(int, minimum=2, maximum=MAX_COUNT),
    "bootstrap": Field(int, minimum=1, maximum=MAX_COUNT),
    #: evaluation: test images of the per-epoch exact test ELBO (absent: all), z draws per label and
    #: test images of the final importance-weighted bound (0 images: off)
    "elbo_images": Field(int, minimum=0, maximum=MAX_COUNT, optional=True),
    "iwae_k": Field(int, minimum=1, maximum=MAX_COUNT),
    "iwae_images": Field(int, minimum=0, maximum=MAX_COUNT),
    "variance_samples": Field(int, minimum=2, maximum=MAX_COUNT),
    "timing_warmup": Field(int, minimum=0, maximum=MAX_COUNT),
    "timing_steps": Field(int, minimum=1, maximum=MAX_COUNT),
    "samples_per_class": Field(int, minimum=0, maximum=MAX_COUNT),
    "timing_batch_size": Field(int, minimum=1, maximum=MAX_COUNT),
    #: the timing probes run alone (true: isolated measurements, the default) or beside other tasks (false:
    #: a pipeline check; each row's ``other_cpu_load`` then says so, and verdicts leave contended rows out)
    "timing_alone": Field(bool),
    #: how the gradient draws are taken: "loop" (one loss_and_grads call each) or "batched" (vectorised
    #: particles, one forward and one backward per chunk: ssvae.particles; the loop where it does not apply)
    "draws": Field(str, choices=("loop", "batched")),
    #: estimators probed along the common trajectory and timed, but not trained as cells (absent: none): e.g.
    #: enum-k10, enum's exact sum over y with 10 z draws, which tells an estimator's z noise from its y noise
    "probed_only": Field(str, many=True, optional=True),
}
PROBE_FIELDS = set(PROBE_SCHEMA)
PROBE_DEFAULTS = {"checkpoints": [0], "variance_samples": 20, "timing_warmup": 5, "timing_steps": 30,
                  "timing_alone": True, "samples_per_class": 10, "timing_batch_size": 200, "own_checkpoints": None,
                  "reference_draws": 200, "bootstrap": 1000, "elbo_images": None, "iwae_k": 100,
                  "iwae_images": 1000, "draws": "loop"}
#: the probe settings a training cell uses (it measures its own gradient variance and draws digits);
#: the others (timing_*) never retrain a cell
CELL_PROBE_FIELDS = ("checkpoints", "own_checkpoints", "variance_samples", "samples_per_class", "reference_draws",
                     "bootstrap", "elbo_images", "iwae_k", "iwae_images", "draws")


class SchemaError(ValueError):
    """A field of the wrong type or out of range (the harness turns it into a ConfigError)."""


def _one(name: str, f: Field, v):
    if f.kind is bool:
        ok = isinstance(v, bool)
    elif f.kind is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif f.kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if ok and not math.isfinite(v):
            raise SchemaError(f"{name} must be finite (got {v})")
        v = float(v) if ok else v
    else:
        ok = isinstance(v, str)
    if not ok:
        raise SchemaError(f"{name} must be {f.describe()} (got {v!r})")
    if f.choices and v not in f.choices:
        raise SchemaError(f"{name} must be one of {', '.join(f.choices)} (got {v!r})")
    if f.kind in (int, float):
        if f.minimum is not None and v < f.minimum:
            raise SchemaError(f"{name} must be at least {f.minimum:g} (got {v!r})")
        if f.above is not None and v <= f.above:
            raise SchemaError(f"{name} must be greater than {f.above:g} (got {v!r})")
        if f.maximum is not None and v > f.maximum:
            raise SchemaError(f"{name} must be at most {f.maximum:g} (got {v!r})")
    return v


def check_field(name: str, f: Field, value):
    """``value`` checked against ``f`` (ints of a float field become floats); raises SchemaError."""
    if isinstance(value, str) and value in f.alt:
        return value
    if f.int_too and isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SchemaError(f"{name} must be at least 1 (got {value})")
        if f.maximum is not None and value > f.maximum:
            raise SchemaError(f"{name} must be at most {f.maximum:g} (got {value})")
        return value
    if not f.many:
        return _one(name, f, value)
    if not isinstance(value, list):
        raise SchemaError(f"{name} must be {f.describe()} (got {value!r})")
    if not value:
        raise SchemaError(f"{name} is empty: give at least one value")
    items = [_one(f"each of {name}", f, v) for v in value]
    dupes = sorted({repr(v) for v in items if items.count(v) > 1})
    if dupes:
        raise SchemaError(f"{name} lists {', '.join(dupes)} twice: give each value once")
    return items


def finite_values(name: str, value) -> None:
    """Every number in ``value`` (nested lists and tables too) finite; raises SchemaError naming the first that is not."""
    if isinstance(value, dict):
        for k, v in value.items():
            finite_values(f"{name}.{k}", v)
    elif isinstance(value, list):
        for v in value:
            finite_values(name, v)
    elif isinstance(value, float) and not math.isfinite(value):
        raise SchemaError(f"{name} must be finite (got {value})")


# -- two grids -------------------------------------------------------------------------------------
#: grid settings every cell uses: two grids that differ in one of them are two grids
CELL_SETTINGS = ("epochs", "steps_per_epoch", "batch_size", "lr", "z_dim", "hidden", "aux_multiplier", "device") + \
    tuple(SPARSE_FIELDS)


def grid_difference(old: dict, new: dict) -> Optional[str]:
    """Why the grids ``old`` and ``new`` (``Grid.to_dict()``, as env.json keeps it) are two grids: a cell
    setting, a cell's probe setting or the options of a shared estimator that differ (None: one grid, or
    a subset of it: other estimators, labels or seeds). A setting one of them does not name is not compared."""
    for key in CELL_SETTINGS:
        if key in old and key in new and old[key] != new[key]:
            return f"{key} {old[key]}, not {new[key]}"
    if "probe" in new:
        for key in CELL_PROBE_FIELDS:
            a, b = (old.get("probe") or {}).get(key), (new["probe"] or {}).get(key)
            if a is not None and a != b:
                return f"probe.{key} {a}, not {b}"
    shared = set(old.get("estimators") or []) & set(new.get("estimators") or [])
    keys = set(old.get("options") or {}) | set(new.get("options") or {})  # an estimator's, or one setting's
    for key in sorted(k for k in keys if (parse_setting_id(k) or {}).get("estimator", k) in shared):
        a, b = (old.get("options") or {}).get(key, {}), (new.get("options") or {}).get(key, {})
        if a != b:
            return f"options of {key} {a}, not {b}"
    return None


def grid_union(old: dict, new: dict) -> dict:
    """The grid a folder holds after ``new`` ran where ``old`` had (two parts of one grid: ``grid_difference``
    found none): ``new``'s fields with the union of their estimators (``old``'s first), aux settings, label
    counts, seeds, probed-only estimators and options, and a baseline if either had one."""
    out = dict(new)
    out["estimators"] = list(old.get("estimators") or []) + [e for e in new.get("estimators") or []
                                                               if e not in (old.get("estimators") or [])]
    for key in ("aux", "labels", "seeds"):
        if key in old or key in new:
            out[key] = sorted(set(old.get(key) or []) | set(new.get(key) or []))
    if "baseline" in old or "baseline" in new:
        out["baseline"] = bool(old.get("baseline")) or bool(new.get("baseline"))
    if old.get("options") or new.get("options"):
        out["options"] = {**(old.get("options") or {}), **(new.get("options") or {})}
    probed = [*((old.get("probe") or {}).get("probed_only") or [])]
    probed += [e for e in (new.get("probe") or {}).get("probed_only") or [] if e not in probed]
    if probed:
        out["probe"] = {**(new.get("probe") or {}), "probed_only": probed}
    return out


# -- the typed shape of a record -------------------------------------------------------------------
#: statuses a result file can hold
RECORD_STATUSES = ("ok", "diverged", "failed")
_NUMBER = (int, float)
#: field -> the types it may have (absent and null are always allowed)
RECORD_TYPES: Dict[str, tuple] = {
    "id": (str,), "cell": (str,), "kind": (str,), "spec": (dict,), "config": (dict,), "error": (str,),
    "metrics": (dict,), "curves": (list,), "grad_variance": (list,), "timing": (list,), "identity": (dict,),
    "versions": (dict,), "started": _NUMBER, "finished": _NUMBER, "seconds": _NUMBER, "token": (str,),
    "host": (str,), "data_sha256": (str,), "other_cpu_load": _NUMBER, "threads": (int,), "matmul": (dict,),
    "resumed_from_epoch": (int,),
}
#: list fields whose items are tables (one row each)
RECORD_ROWS = ("curves", "grad_variance", "timing")


def record_problem(record) -> Optional[str]:
    """Why ``record`` (a parsed result file) is not a record: "no status", "metrics is a str", ...; None if it is.

    Only the shape is checked (a table where a table belongs, numbers where numbers belong); the values
    inside ``metrics`` and the rows are read leniently by the report."""
    if not isinstance(record, dict):
        return f"not a JSON object ({type(record).__name__})"
    if record.get("status") not in RECORD_STATUSES:
        return "no status" if "status" not in record else f"status {record['status']!r}"
    for key, types in RECORD_TYPES.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and types == _NUMBER)):
            return f"{key} is a {type(value).__name__}"
    for key in RECORD_ROWS:
        if any(not isinstance(row, dict) for row in record.get(key) or []):
            return f"{key} holds a row that is not a table"
    return None
