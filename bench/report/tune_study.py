"""The tuning study and its command: ``python -m bench tune OUT``.

:func:`write_report` selects (:func:`select`, the rule :mod:`bench.run.tune` states) and writes
``OUT/tuned.json``, ``OUT/tables/tune_*.csv|md`` (every combination with its mean and 95 % t-interval over
seeds, and the choices with the chosen minus Pyro's default, paired over seeds),
``OUT/plots/tune_sensitivity.png`` (validation accuracy against learning rate, one line per estimator,
provenance in the figure) and ``OUT/tune.md``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from ssvae.config import DEFAULT_RUN, sci
from ssvae.errors import ConfigError
from ssvae.estimators import REGISTRY

from ..commands import COMMANDS
from ..core.provenance import run_parts
from ..core.schema import Folder, setting_id
from ..core.stats import mean_interval, variant_label
from ..run.search_lines import VOID
from ..run.tune import CHOICE_FILE, PYRO_LR, RUN_FIELDS, SELECT_ON, candidates, planned_trials, tuned_keys
from .tune_plots import cell, lr_name, plot_sensitivity
from .tune_text import write_markdown


# -- selection ------------------------------------------------------------------------------------
def _records(out: Path) -> List[dict]:
    recs = [_read_record(path) for path in sorted(Folder(out).runs.glob("*.json"))]
    return [rec for rec in recs if rec.get("kind", "train") == "train" and rec.get("config")]


def _values(cfg: dict, keys: List[str]) -> Dict:
    opts = cfg.get("options") or {}
    return {k: (cfg.get(k) if k in RUN_FIELDS else opts.get(k)) for k in keys}


def _interval(xs: List[float]) -> Tuple[float, float]:
    """(mean, 95 % Student-t half-width); the half-width is NaN for one value."""
    mean, half = mean_interval(xs)
    return mean, float("nan") if half is None else half


def combinations(out: Path, tune: Dict) -> List[dict]:
    """One row per (estimator, aux, labels, combination; in a search, per trial): its seeds' validation accuracies."""
    rows: Dict[tuple, dict] = {}
    for rec in _records(out):
        cfg = rec["config"]
        keys = tuned_keys(tune, cfg["estimator"])
        values = _values(cfg, keys)
        # a search's row is one trial (a continued search could propose the same values twice: two rows)
        key = (cfg["estimator"], bool(cfg["aux"]), cfg["labels"], json.dumps(values, sort_keys=True),
               (rec.get("search") or {}).get("trial"))
        row = rows.setdefault(key, {"estimator": cfg["estimator"], "aux": bool(cfg["aux"]),
                                    "labels": cfg["labels"], "values": values, "trial": key[-1], "options": {},
                                    "seeds": {}, "statuses": {}, "spaces": [], "commits": Counter()})
        row["commits"][str(rec.get("git_commit") or "?")] += 1
        if rec.get("search", {}).get("space") not in row["spaces"]:
            row["spaces"].append(rec.get("search", {}).get("space"))
        row["options"] = {"lr": cfg["lr"], **(cfg.get("options") or {})}
        row["statuses"][cfg["seed"]] = rec.get("status")
        metrics = rec.get("metrics") or {}
        if metrics.get("best_valid_acc") is not None:  # where the trial stopped and its best so far (the pruner's)
            row.setdefault("reached", {})[cfg["seed"]] = (metrics.get("epochs_run"), float(metrics["best_valid_acc"]))
        if rec.get("status") == "ok":
            row["seeds"][cfg["seed"]] = float(rec["metrics"][SELECT_ON])
    out_rows = []
    for row in rows.values():
        accs = [row["seeds"][s] for s in sorted(row["seeds"])]
        row["eligible"] = bool(accs) and all(st == "ok" for st in row["statuses"].values())
        row["mean"], row["half_width"] = _interval(accs) if accs else (float("nan"), float("nan"))
        row.update(_stopped(row))  # the table's columns and the figure's hollow points
        out_rows.append(row)
    out_rows.sort(key=lambda r: (r["estimator"], r["aux"], r["labels"], r["options"].get("lr", 0),
                                 json.dumps(r["values"], sort_keys=True)))
    return out_rows


def _order(tune: Dict, est: str, values: Dict) -> int:
    """Position of ``values`` in the preset's candidate order (for the last tie-break)."""
    for i, cand in enumerate(candidates(tune, est)):
        if all(cand.get(k, values.get(k)) == values.get(k) for k in values):
            return i
    return 10 ** 6


def select(rows: List[dict], tune: Dict, lr: float = PYRO_LR) -> Dict[tuple, dict]:
    """(estimator, aux, labels) -> the chosen row (eligible rows only); ties go to the learning rate nearest
    ``lr`` (the grid's: Pyro's), then the preset's order."""
    best: Dict[tuple, dict] = {}
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        if r["eligible"]:
            groups.setdefault((r["estimator"], r["aux"], r["labels"]), []).append(r)
    for key, rs in groups.items():
        best[key] = max(rs, key=lambda r: (round(r["mean"], 10),
                                           -abs(math.log(r["options"]["lr"] / lr)),
                                           -_order(tune, key[0], r["values"])))
    return best


def _default_row(rows: List[dict], est: str, aux: bool, labels: int, lr: float = PYRO_LR,
                 aux_multiplier: float = DEFAULT_RUN.aux_multiplier) -> Optional[dict]:
    """The combination at the grid's learning rate and aux multiplier (Pyro's, unless the preset sets its own:
    the search-table1 preset's are Pyro's Table 1 setting) with the estimator's default options, if it was run."""
    for r in rows:
        if (r["estimator"], r["aux"], r["labels"]) != (est, aux, labels):
            continue
        if not math.isclose(r["options"]["lr"], lr, rel_tol=1e-9):
            continue
        if all(_is_default(est, k, v, lr, aux_multiplier) for k, v in r["values"].items() if k != "lr"):
            return r  # only what was tuned is compared: options set from the run's budget (a schedule's rate) vary
    return None


def _is_default(est: str, key: str, value, lr: float = PYRO_LR,
                aux_multiplier: float = DEFAULT_RUN.aux_multiplier) -> bool:
    """Whether option ``key`` = ``value`` is ``est``'s default (its registry record's ``defaults``; the learning
    rate and the aux multiplier: the grid's, ``lr`` and ``aux_multiplier``)."""
    if key == "aux_multiplier":
        return math.isclose(value, aux_multiplier, rel_tol=1e-9)
    d = REGISTRY[est].defaults if est in REGISTRY else {}
    if key not in d:
        return True  # options that are not tuned keep their defaults
    if key == "baseline_lr" and value is not None:
        return math.isclose(value, lr, rel_tol=1e-9)  # the run's lr, i.e. Pyro's at the default
    return d[key] == value


def _stopped(row: dict) -> dict:
    """Where a trial stopped: the most epochs a seed ran, and the mean over its seeds of each seed's best
    validation accuracy by then (a pruned trial's: what the pruner compared; a finished one's: its mean)."""
    reached = list((row.get("reached") or {}).values())
    if not reached:
        return {"epochs_run": None, "best_so_far": None}
    return {"epochs_run": max(e or 0 for e, _ in reached), "best_so_far": sum(a for _, a in reached) / len(reached)}


def _paired_diff(a: dict, b: dict) -> Tuple[float, float, int]:
    """Mean and 95 % t half-width of a - b over the seeds both have (paired)."""
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
    if not seeds:
        return float("nan"), float("nan"), 0
    mean, hw = _interval([a["seeds"][s] - b["seeds"][s] for s in seeds])
    return mean, hw, len(seeds)


def tuned_space(prov: dict) -> Dict:
    """The candidates per key in ``[tune]``'s shape: a grid's own table, or a search's space (a range as its
    two ends, an estimator's keys under its name)."""
    if prov.get("tune"):
        return prov["tune"]
    space = (prov.get("search") or {}).get("space") or {}
    return {est: {k: (list(rest) if kind == "range" else rest[0]) for k, (kind, *rest) in keys.items()}
            for est, keys in space.items()}


def _distinct(rows: Iterable[dict]) -> int:
    """How many distinct combinations ``rows`` hold: two trials a search gave the same values count once."""
    return len({json.dumps(r["values"], sort_keys=True) for r in rows})


def _same_setting(a: dict, b: dict) -> bool:
    return a is not b and (a["estimator"], a["aux"], a["labels"]) == (b["estimator"], b["aux"], b["labels"])


#: a value within this share of a range's log-width from an end is on that edge
EDGE_SHARE = 0.05


def _flat_space(space: Dict) -> Dict:
    """``space`` with a choice among option sets (gumbel's ``schedule``: ``{tau0, tau_min}`` pairs) as one
    choice list per option that differs between the sets (``tau0``: [1.0, 0.5]), as the chosen values name them."""
    flat = {}
    for key, (kind, *rest) in space.items():
        sets = rest[0] if kind == "choices" else []
        if sets and all(isinstance(c, dict) for c in sets):
            for opt in sorted({k for c in sets for k in c}):
                column = [c.get(opt) for c in sets]
                if len(set(map(repr, column))) > 1:
                    flat[opt] = ["choices", column]
        else:
            flat[key] = [kind, *rest]
    return flat


def edges(prov: dict, est: str, values: Dict) -> str:
    """Which chosen values sit on an edge of what was searched ("lr at the top of 1e-05..0.001"): a
    candidate list's smallest or largest number (an option of a choice among option sets: its own list), or a
    search range's outer 5 % (log scale)."""
    space = ((prov.get("search") or {}).get("space") or {}).get(est)
    if space is None:  # a grid: every key is a candidate list
        tune = prov.get("tune") or {}
        space = {k: ["choices", v] for k, v in {**{k: v for k, v in tune.items() if not isinstance(v, dict)},
                                                 **(tune.get(est) or {})}.items()}
    out = []
    for key, (kind, *rest) in _flat_space(space).items():
        v = values.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if kind == "range":
            lo, hi = rest
            tol = EDGE_SHARE * math.log(hi / lo)
            bottom, top = math.log(v / lo) <= tol, math.log(hi / v) <= tol
        else:
            nums = [c for c in rest[0] if isinstance(c, (int, float)) and not isinstance(c, bool)]
            if len(nums) < 2 or len(nums) != len(rest[0]):
                continue
            lo, hi = min(nums), max(nums)
            bottom, top = v == lo, v == hi
        if bottom or top:
            out.append(f"{key} at the {'bottom' if bottom else 'top'} of {cell(lo)}..{cell(hi)}")
    return "; ".join(out)


# -- the study -----------------------------------------------------------------------------------
def _table(path_stem: Path, columns: List[str], rows: List[dict]) -> None:
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    with open(path_stem.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: cell(r.get(c)) for c in columns})
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    path_stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def provenance(out: Path) -> dict:
    try:
        env = json.loads(Folder(out).env.read_text())
    except (OSError, ValueError):
        env = {}
    grid = env.get("grid") or {}
    # a search's commands each add settings (no task list): its records name the commit they ran on, and the grid
    # cells a trial took instead of training (bench search --reuse: study, trial, folder, CPU)
    commits, reused, void = Counter(), set(), set()
    for path in Folder(out).runs.glob("*.json") if grid.get("search") else ():
        rec = _read_record(path)
        commits[str(rec.get("git_commit") or "?")] += 1
        search = rec.get("search") or {}
        trial = (str(search.get("study")), int(search.get("trial") or 0))
        if rec.get("status") == VOID:
            void.add((*trial, str(rec.get("void"))))
        if rec.get("reused_from"):
            reused.add((*trial, str(Path(rec["reused_from"]).parent.parent),
                        rec.get("reused_device") or "an unrecorded CPU"))
    return {"preset": env.get("preset"), "record_commits": dict(sorted(commits.items(), key=str)),
            "reused": sorted(reused), "void": sorted(void),
            "commit": env.get("git_commit"), "date": env.get("date"),
            "device": env.get("device_name") or env.get("device"), "cpu": env.get("cpu_name"),
            "torch": env.get("torch"), "pyro": env.get("pyro"), "labels": grid.get("labels"),
            "seeds": grid.get("seeds"), "epochs": grid.get("epochs"), "steps_per_epoch": grid.get("steps_per_epoch"),
            "command": env.get("command"), "tune": grid.get("tune"), "search": grid.get("search"),
            # the default a choice is compared with: the grid's learning rate and aux multiplier
            "lr": grid.get("lr") or PYRO_LR, "aux_multiplier": grid.get("aux_multiplier") or DEFAULT_RUN.aux_multiplier,
            # a folder resumed or extended by later commands: every part, oldest first
            "parts": run_parts(env)}


def _read_record(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def write_report(out: Path) -> dict:
    """Select, and write the choice file, the tables and the sensitivity plot; returns the choice document."""
    prov = provenance(out)
    tune = tuned_space(prov)
    if not tune:
        raise ConfigError(f"{out}: not a tuning run (its env.json has no grid.tune or grid.search table); "
                          f"run python -m bench run --preset tune or python -m bench search first")
    listed = combinations(out, tune)
    if not listed:
        raise ConfigError(f"{out}: no finished cells under runs/")
    # a void run (bench.run.search_lines) is listed, and neither a candidate nor counted
    rows = [r for r in listed if VOID not in r["statuses"].values()]
    best = select(rows, tune, prov["lr"])
    all_rows = []
    for r in listed:
        chosen = best.get((r["estimator"], r["aux"], r["labels"])) is r
        all_rows.append({"estimator": variant_label(r["estimator"], r["aux"]), "labels": r["labels"],
                         "trial": "" if r["trial"] is None else r["trial"], "values": r["values"],
                         "lr": r["options"]["lr"], "n_seeds": len(r["seeds"]),
                         "valid_acc_mean": r["mean"], "valid_acc_ci95": r["half_width"],
                         "seeds": ", ".join(f"{s}: {a:.4f}" for s, a in sorted(r["seeds"].items())),
                         "epochs_run": r["epochs_run"], "best_so_far": r["best_so_far"],
                         "status": ", ".join(sorted(set(str(s) for s in r["statuses"].values()))),
                         "chosen": "yes" if chosen else ""})
    _table(Folder(out).tables / "tune_all", ["estimator", "labels", "trial", "values", "n_seeds", "valid_acc_mean",
                                         "valid_acc_ci95", "seeds", "status", "epochs_run", "best_so_far", "chosen"],
           all_rows)
    choice_rows, chosen_doc, made_by = [], {}, {}
    for (est, aux, labels), r in sorted(best.items()):
        ran = 1 + sum(1 for o in rows if _same_setting(o, r))
        planned = planned_trials(prov.get("search"), est, [sp for o in rows if o is r or _same_setting(o, r)
                                                          for sp in o["spaces"]])  # a search: done when all ran
        d = _default_row(rows, est, aux, labels, prov["lr"], prov["aux_multiplier"])
        diff, hw, n = _paired_diff(r, d) if d is not None else (float("nan"), float("nan"), 0)
        choice_rows.append({"estimator": variant_label(est, aux), "labels": labels, "chosen": r["values"],
                            "valid_acc_mean": r["mean"], "valid_acc_ci95": r["half_width"],
                            "default_valid_acc": d["mean"] if d else None,
                            "chosen_minus_default": diff, "diff_ci95": hw, "paired_seeds": n,
                            "beats": _distinct(o for o in rows if _same_setting(o, r) and o["eligible"]
                                               and o["mean"] < r["mean"]),
                            "not_eligible": _distinct(o for o in rows if _same_setting(o, r) and not o["eligible"]),
                            "on_edge": edges(prov, est, r["values"]),
                            "trials": f"{ran} of {planned}" if planned else ran})
        if planned and ran < planned:
            continue  # an unfinished search chooses nothing yet (its table row says how far it is)
        chosen_doc[setting_id(est, aux, labels)] = dict(r["values"])
        made_by[setting_id(est, aux, labels)] = dict(sorted(sum((o["commits"] for o in rows if o is r
                                                                 or _same_setting(o, r)), Counter()).items()))
    _table(Folder(out).tables / "tune_choices", ["estimator", "labels", "chosen", "valid_acc_mean", "valid_acc_ci95",
                                             "default_valid_acc", "chosen_minus_default", "diff_ci95",
                                             "paired_seeds", "beats", "not_eligible", "on_edge", "trials"],
           choice_rows)
    doc = {"settings": {k: chosen_doc[k] for k in sorted(chosen_doc)}, "selected_on": SELECT_ON,
           "rule": "highest mean over seeds of the best validation accuracy; a combination with a failed or "
                   f"diverged seed is not eligible; ties: nearest {lr_name(prov['lr'])} {sci(prov['lr'])}, then the preset's order. "
                   "Test accuracy is not read.",
           "source": {k: prov.get(k) for k in ("preset", "commit", "date", "device", "command", "labels",
                                               "seeds", "epochs", "steps_per_epoch")},
           # the folder's last command above; each choice's own records, by the commit they ran on
           "records_by_commit": {k: made_by[k] for k in sorted(made_by)},
           "applies": "per setting (estimator, aux, label count): `bench run --tuned` sets each setting's values "
                      "and leaves a setting the file does not name at the preset's"}
    if not per_estimator_file(out / CHOICE_FILE):
        (out / CHOICE_FILE).write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    plot_sensitivity(out, rows, best, prov)
    write_markdown(out, all_rows, choice_rows, prov)
    return doc


def per_estimator_file(path: Path) -> bool:
    """Whether ``path`` is a choice file of the per-estimator format (``estimators``, applied to every setting: a
    tuning grid's before choices were made per setting). ``bench tune`` keeps such a file: references ran with
    it (its sha256 is in their env.json), and rewritten per setting it would apply to fewer of their cells."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "estimators" in doc and "settings" not in doc


def add_tune_parser(subparsers) -> argparse.ArgumentParser:
    """``tune OUT``; sets ``func=cmd_tune``."""
    p = subparsers.add_parser(
        "tune", help=COMMANDS["tune"].help,
        description="Tuning on validation data: from a run of the ``tune`` preset (or any grid with a [tune] table), "
                    "the choice file tuned.json, the tables and the sensitivity plot.")
    p.add_argument("out", help="the output folder of a tuning run (python -m bench run --preset tune)")
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(args) -> int:
    out = Path(args.out)
    if not Folder(out).runs.is_dir() and Folder(out).journal.is_file():
        raise ConfigError(f"{out}: no trial of this search has finished yet ({Folder.JOURNAL} holds its state): "
                          "rerun the python -m bench search command that made it to go on")
    if not Folder(out).runs.is_dir():
        raise ConfigError(f"{out}: no runs/ folder (run python -m bench run --preset tune --out {out} first)")
    doc = write_report(out)
    for est, vals in doc["settings"].items():
        print(f"{est:22s} {cell(vals)}")
    if per_estimator_file(out / CHOICE_FILE):
        print(f"{out / CHOICE_FILE}: kept as it is (per estimator, the format references ran with; the choices above "
              "are per setting)")
    print(f"-> {out / CHOICE_FILE}, {out / 'tune.md'}, {out / 'plots' / 'tune_sensitivity.png'}")
    return 0
