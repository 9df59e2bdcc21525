"""Tuning on validation data: the ``tune`` preset's grid, the ``[search]`` table of a search at the reporting
budget (:mod:`bench.run.search` runs it) and the choice file (the selection rule is :mod:`bench.report.tune_study`'s).

A preset with a ``[tune]`` table tries, for each estimator, every combination of its candidate
values (the product of the lists)::

    [tune]                                  # for every estimator of the preset
    lr = [1.4e-4, 4.2e-4, 1.26e-3]
    [tune.nvil]                             # one estimator's own candidates (override the above)
    baseline_lr = [4.2e-4, 4.2e-3]
    [tune.gumbel]                           # a list of tables: each table is one candidate
    schedule = [{tau0 = 1.0, tau_min = 0.5}, {tau0 = 0.5, tau_min = 0.5}]

``lr`` sets the run's learning rate; any other key is an estimator option (a table candidate
sets several options at once, a temperature schedule). An estimator given no table of its own
takes its registry record's candidates (``Estimator.search``: the tables above are nvil's and
gumbel's); ``[tune.EST]`` replaces them. Each combination is its own cell,
its values in the cell's config (so in its identity) and in its id (``..._lr-0.00014``).

Selection (:func:`bench.report.tune_study.select`) reads the finished cells and, per estimator and aux setting, takes
the combination with the highest mean over seeds of the best validation accuracy
(``best_valid_acc``: the classifier on the 10,000 validation images, after the epoch where it
is highest). Test accuracy is never read. A combination with a failed or diverged seed is not
eligible; ties go to the combination nearest Pyro's learning rate, then the first listed.
The choice file ``tuned.json`` maps each estimator to its chosen values::

    {"estimators": {"rloo": {"lr": 0.00014, "k": 10}, ...}, "selected_on": "best_valid_acc", ...}

and ``python -m bench run --preset P --tuned tuned.json`` applies them to any preset (as
``options.ESTIMATOR.*``: ``--set`` still overrides), recording the file, its sha256 and the
values in the run's ``env.json``.

``python -m bench tune OUT`` (:mod:`bench.report.tune_study`) writes ``OUT/tuned.json``, ``OUT/tables/tune_*.csv|md`` (every
combination with its mean and 95 % t-interval over seeds, and the choices with the chosen
minus Pyro's default, paired over seeds) and ``OUT/plots/tune_sensitivity.png`` (validation
accuracy against learning rate, one line per estimator, provenance in the figure).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ssvae.config import DEFAULT_RUN, sci
from ssvae.errors import ConfigError
from ssvae.estimators import REGISTRY
from ssvae.model import SSVAE


#: Pyro's learning rate (``ss_vae_M2.py``, ``ssvae.config.DEFAULT_RUN``): the default a tuned choice is compared with
PYRO_LR = DEFAULT_RUN.lr
#: the metric selection uses (validation accuracy only; test accuracy is never read)
SELECT_ON = "best_valid_acc"
CHOICE_FILE = "tuned.json"
#: the run fields a search may vary (beside the estimator's options)
RUN_FIELDS = ("lr", "aux_multiplier")
_TOP_KEYS = {"trials", "first_rung", "reduction", "seed"}
#: what a search's pruner sees after each epoch (bench.run.search.objective_so_far), recorded with the search so
#: that a study says which rule pruned it: searches made before this key existed saw the last epoch's mean
#: validation accuracy (a trial that peaked early could be pruned on its fall)
PRUNE_ON = "best_valid_so_far"


# -- the grid ------------------------------------------------------------------------------------
def check_tune(tune, estimators: List[str]) -> Dict:
    """Validate a ``[tune]`` table (one-line :class:`ConfigError`); returns it with the default candidates of
    each estimator it gives no table of its own (its registry record's ``search``; none without a table)."""
    if not isinstance(tune, dict):
        raise ConfigError("tune must be a table: [tune] lr = [...] and [tune.ESTIMATOR] option = [...]")
    for key, value in tune.items():
        if isinstance(value, dict):
            if key not in REGISTRY:
                raise ConfigError(f"tune.{key}: unknown estimator (choose from {', '.join(REGISTRY)})")
            for k, v in value.items():
                _check_list(f"tune.{key}.{k}", v)
        else:
            _check_list(f"tune.{key}", value)
    tune = _with_searches(tune, estimators)
    # every candidate builds: a bad value fails here, in one line
    tiny = SSVAE(input_size=4, z_dim=1, hidden=(2,))
    for est in set(estimators) | {k for k, v in tune.items() if isinstance(v, dict)}:
        for cand in candidates(tune, est):
            REGISTRY[est].build(tiny, {k: v for k, v in cand.items() if k != "lr"})
    return tune


def _with_searches(tune: Dict, estimators: List[str]) -> Dict:
    """``tune`` plus, for each estimator with no table in it, its record's candidates (when it has any)."""
    if not tune:
        return tune
    extra = {e: {k: list(v) for k, v in REGISTRY[e].search.items()} for e in estimators
             if e not in tune and REGISTRY[e].search}
    return {**tune, **extra}


def _check_list(where: str, values) -> None:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where} must be a non-empty list of candidates (got {values!r})")
    if where.rsplit(".", 1)[-1] == "lr":
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"{where}: learning rates must be positive numbers (got {v!r})")


def _spec(tune: Dict, estimator: str) -> Dict[str, list]:
    spec = {k: v for k, v in tune.items() if not isinstance(v, dict)}
    spec.update(tune.get(estimator, {}))
    return spec


def candidates(tune: Dict, estimator: str) -> List[Dict]:
    """Every combination of ``estimator``'s candidate values: a list of flat option dicts
    (``lr`` included); ``[{}]`` when nothing is tuned."""
    spec = _spec(tune or {}, estimator)
    keys = list(spec)
    out = []
    for combo in itertools.product(*(spec[k] for k in keys)):
        opts = {}
        for k, v in zip(keys, combo):
            if isinstance(v, dict):
                opts.update(v)
            else:
                opts[k] = v
        out.append(opts)
    return out or [{}]


def tuned_keys(tune: Dict, estimator: str) -> List[str]:
    """The option names ``estimator``'s candidates set (table candidates contribute their keys)."""
    keys: List[str] = []
    for k, values in _spec(tune or {}, estimator).items():
        for v in values:
            for name in (v if isinstance(v, dict) else {k: v}):
                if name not in keys:
                    keys.append(name)
    return keys


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).lower()


def cell_tag(tune: Dict, cfg) -> str:
    """The suffix that tells the combinations of one estimator apart in cell ids: ``_lr-0.00014_k-3``."""
    if not tune:
        return ""
    opts = dict(cfg.options)
    parts = []
    for k in tuned_keys(tune, cfg.estimator):
        v = cfg.lr if k == "lr" else opts.get(k)
        parts.append(f"{k}-{_fmt(v)}")
    return "".join("_" + p for p in parts)


# -- the [search] table (bench/run/search.py runs it) ------------------------------------------
def check_search(search, estimators: List[str]) -> Dict:
    """Validate a ``[search]`` table (one-line :class:`ConfigError`); returns it normalised:
    ``{"trials", "first_rung", "reduction", "seed", "space": {estimator: {key: ("range", lo, hi) |
    ("choices", [...])}}, "prune_on": PRUNE_ON}`` with each estimator's record's candidates where the table gives
    none."""
    if not isinstance(search, dict):
        raise ConfigError("search must be a table: [search] trials = 16, lr = {low = 3e-5, high = 3e-3}")
    out = {"trials": search.get("trials", 16), "first_rung": search.get("first_rung", 1),
           "reduction": search.get("reduction", 3), "seed": search.get("seed", 0)}
    for key in ("trials", "first_rung", "reduction"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if key == "reduction" else 1):
            raise ConfigError(f"search.{key} must be an integer of at least {2 if key == 'reduction' else 1} "
                              f"(got {v!r})")
    if isinstance(out["seed"], bool) or not isinstance(out["seed"], int):
        raise ConfigError(f"search.seed must be an integer (got {out['seed']!r})")
    own = {k: v for k, v in search.items() if isinstance(v, dict) and not set(v) <= {"low", "high"}}
    shared = {k: v for k, v in search.items() if k not in _TOP_KEYS and k not in own}
    for k in own:  # a table for an estimator the grid was narrowed away from (--estimators) waits unused
        if k not in REGISTRY:
            raise ConfigError(f"search.{k}: not an estimator (known: {', '.join(sorted(REGISTRY))})")
    space = {}
    for est in estimators:
        record = REGISTRY[est]
        keys = {**{k: list(v) for k, v in record.search.items()}, **shared, **own.get(est, {})}
        space[est] = {k: _dimension(f"search.{est}.{k}" if k in own.get(est, {}) else f"search.{k}", k, v, est)
                      for k, v in keys.items()}
        # every candidate and both ends of every range build: a bad value fails here, in one line
        tiny = SSVAE(input_size=4, z_dim=1, hidden=(2,))
        for k, (kind, *rest) in space[est].items():
            if k not in RUN_FIELDS:
                for v in (rest if kind == "range" else rest[0]):
                    record.build(tiny, v if isinstance(v, dict) else {k: v})
    out["space"] = space
    out["prune_on"] = PRUNE_ON
    return out


def _dimension(where: str, key: str, value, est: str):
    if key not in RUN_FIELDS and key not in REGISTRY[est].defaults and not (isinstance(value, list) and value
                                                                           and all(isinstance(v, dict) for v in value)):
        raise ConfigError(f"{where}: {est} has no option {key!r} (its options: "
                          f"{', '.join(sorted(REGISTRY[est].defaults)) or 'none'}; or lr, aux_multiplier)")
    if isinstance(value, dict):
        lo, hi = value.get("low"), value.get("high")
        if set(value) - {"low", "high"} or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in (lo, hi)) or not 0 < lo < hi or not math.isfinite(hi):
            raise ConfigError(f"{where} must be {{low = A, high = B}} with 0 < A < B (got {value!r})")
        return ("range", lo, hi)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a list of candidates or a range {{low = A, high = B}} (got {value!r})")
    return ("choices", list(value))


def search_rungs(spec: Dict, epochs: int) -> List[int]:
    """The epochs at which a search's pruner decides: ``first_rung`` x ``reduction``^k, before the last epoch."""
    rungs, r = [], spec["first_rung"]
    while r < epochs:
        rungs.append(r)
        r *= spec["reduction"]
    return rungs


def search_share(spec: Dict, epochs: int) -> float:
    """The share of its trials' full budget a search trains when halving keeps exactly 1/``reduction`` of the
    trials at every rung (the first trials of a study, having no rivals yet, go further)."""
    bounds = [0, *search_rungs(spec, epochs), epochs]
    return sum((bounds[k + 1] - bounds[k]) / spec["reduction"] ** k for k in range(len(bounds) - 1)) / epochs


def planned_trials(search: Optional[Dict], est: str, spaces: List) -> Optional[int]:
    """How many trials a search (its env.json ``search`` table; None: not a search) plans for one setting of
    ``est`` whose records were drawn from ``spaces``: ``trials`` per space, from the first its records name to
    the estimator's current one (a widening adds ``trials``). A record that names no space (written before
    spaces were recorded) counts as the first."""
    if not (search or {}).get("trials"):
        return None
    history = (search.get("widened") or {}).get(est, []) + [search["space"][est]]
    first = min([history.index(sp) if sp in history else 0 for sp in spaces] or [len(history) - 1])
    return search["trials"] * (len(history) - first)


def widenings(search: Dict) -> List[str]:
    """Each widening of a search's ranges, as ``gumbel: lr 4.2e-5..4.2e-3 -> 4.2e-5..4.2e-2``."""
    def span(dim) -> str:
        kind, *rest = dim
        return f"{sci(rest[0])}..{sci(rest[1])}" if kind == "range" else "[" + ", ".join(map(str, rest[0])) + "]"

    out = []
    for est, earlier in sorted((search.get("widened") or {}).items()):
        for old, new in zip(earlier, earlier[1:] + [search["space"][est]]):
            out.append(f"{est}: " + ", ".join(f"{k} {span(old[k])} -> {span(v)}" for k, v in new.items() if old.get(k) != v))
    return out


def encode(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, dict) else v


def values_of(params: Dict) -> Dict:
    """Optuna's params as run values: a table candidate's keys set one by one."""
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and v.startswith("{"):
            out.update(json.loads(v))
        else:
            out[k] = v
    return out


def default_params(space: Dict, est: str, lr: float, aux_multiplier: float) -> Optional[Dict]:
    """The default as Optuna params (the first trial of every setting), or None where a range or a
    candidate list leaves the default out."""
    defaults = {"lr": lr, "aux_multiplier": aux_multiplier, **REGISTRY[est].defaults}
    if "baseline_lr" in defaults and defaults["baseline_lr"] is None:
        defaults["baseline_lr"] = lr  # an NVIL baseline's default: the run's own learning rate
    params = {}
    for key, (kind, *rest) in space.items():
        if kind == "range":
            if key not in defaults or not rest[0] <= defaults[key] <= rest[1]:
                return None
            params[key] = defaults[key]
        else:
            hit = [v for v in rest[0] if (all(defaults.get(k) == x for k, x in v.items()) if isinstance(v, dict)
                                          else defaults.get(key) == v)]
            if not hit:
                return None
            params[key] = encode(hit[0])
    return params



# -- applying a choice file -------------------------------------------------------------------
def load_choices(path) -> Tuple[Dict[str, Dict], dict]:
    """(estimator or setting -> chosen values, provenance) from a choice file; one-line ConfigError if
    unusable. A file with a ``settings`` table (a search's: ``"gumbel+aux_L3000": {...}``) chooses per setting,
    one with only ``estimators`` (a tuning grid's) per estimator."""
    p = Path(path)
    try:
        blob = p.read_bytes()
        doc = json.loads(blob)
    except OSError as e:
        raise ConfigError(f"--tuned {path}: cannot read it ({e.strerror or e})") from None
    except ValueError:
        raise ConfigError(f"--tuned {path}: not a JSON file (write one with python -m bench tune OUT)") from None
    ests = (doc.get("settings") or doc.get("estimators")) if isinstance(doc, dict) else None
    if not isinstance(ests, dict) or not all(isinstance(v, dict) for v in ests.values()):
        raise ConfigError(f"--tuned {path}: no 'settings' or 'estimators' table of chosen values (not a choice file)")
    info = {"file": str(path), "sha256": hashlib.sha256(blob).hexdigest(),
            "selected_on": doc.get("selected_on"), "source": doc.get("source"), "chosen": ests}
    return ests, info


def apply_choices(preset: dict, choices: Dict[str, Dict]) -> dict:
    """The preset with the chosen values as per-estimator (or per-setting) options (the preset's own options
    kept where the file says nothing)."""
    options = {e: dict(o) for e, o in (preset.get("options") or {}).items()}
    for est, values in choices.items():
        options.setdefault(est, {}).update(values)
    preset = dict(preset)
    preset["options"] = options
    return preset
