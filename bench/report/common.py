"""What every section shares: variant names and order, colours by estimator family, the provenance
line, number formatting, and the few lookups several sections make (Pyro's Table 1, seconds per
epoch, the label counts the rankings prefer).

Colours. An estimator's hue says its family; its shade tells the members apart:

* enumeration (``enum``, ``enum-seq``): blues;
* score function (``trace``, ``trace-avg``, ``trace-bx``, ``trace-k10``, ...): oranges;
* relaxation (``gumbel``, ``gumbel-st``, ...): greens;
* Rao-Blackwell (``rb-topk``, ...): purples;
* supervised only (``baseline``): grey.

Each family spreads its members evenly over its colour map, so a family of any size stays distinct;
an estimator no rule knows gets a hue of its own from an evenly spaced circle (husl) away from the
families'. A registered estimator's family is its registry record's (``ssvae/estimators.py``);
:data:`FAMILY_RULES` gives each family its colour map and, for names the registry does not know, prefixes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colormaps

from ssvae.estimators import REGISTRY

from ..analysis.diagnostics import isolated_timing
from ..analysis.wall_time import isolated_epoch_seconds
from ..core.provenance import run_parts, tasks_by
from ..core.stats import as_bool, variant_label  # noqa: F401  (variant_label: the report's name for it)
from .data import BASELINES, Results

BENCH = Path(__file__).resolve().parents[1]
PYRO_TABLE1 = BENCH / "pyro_table1.csv"
PUBLISHED_ANCHORS = BENCH / "published_anchors.csv"
#: estimators shown first, in Pyro's order; the rest follow in the grid's order; baselines go last
LEADING = ("trace", "enum")
#: step kinds in the order every table and plot shows them
KIND_ORDER = ("sup", "unsup", "aux")
#: label counts the rankings and the verdict prefer (else the largest / smallest in the folder)
RANK_LABELS = (3000, 100)

#: (family, colour map, name prefixes); the first rule whose prefix matches wins
FAMILY_RULES = (
    ("enumeration", "Blues", ("enum",)),
    ("Rao-Blackwell", "Purples", ("rb-", "rb_", "rao")),
    ("relaxation", "Greens", ("gumbel", "relax", "concrete", "rebar", "st-")),
    ("score function", "Oranges", ("trace", "reinforce", "nvil", "vimco", "score")),
    ("supervised only", "Greys", BASELINES),
)
AUX_STYLE = {False: {"linestyle": "-", "marker": "o"}, True: {"linestyle": "--", "marker": "s"}}


# -- variants --------------------------------------------------------------------------------

def estimator_order(res: Results) -> List[str]:
    seen = list((res.env.get("grid") or {}).get("estimators", []))
    seen += sorted(set(res.runs["estimator"]) - set(seen) - {"?"})
    first = [e for e in LEADING if e in seen]
    last = [e for e in seen if e in BASELINES]
    return first + [e for e in seen if e not in first and e not in last] + last


def variants(res: Results) -> List[Tuple[str, bool]]:
    """(estimator, aux) pairs in the report's order: trace, trace + aux, enum, enum + aux, ..., baseline."""
    present = set(zip(res.runs["estimator"], res.runs["aux"]))
    return [(e, a) for e in estimator_order(res) for a in (False, True) if (e, a) in present]


def kinds_in(values) -> List[str]:
    """The step kinds among ``values`` in :data:`KIND_ORDER`, unknown kinds after them, sorted."""
    have = set(values)
    return [k for k in KIND_ORDER if k in have] + sorted(have - set(KIND_ORDER))


# -- colours -----------------------------------------------------------------------------------

def family(estimator: str) -> Optional[str]:
    """The estimator's family: its registry record's (``Estimator.family``); for a name the registry does not
    know (another version's results), the first :data:`FAMILY_RULES` prefix that matches; else None."""
    if estimator in REGISTRY:
        return REGISTRY[estimator].family
    name = estimator.lower()
    for fam, _cmap, prefixes in FAMILY_RULES:
        if name.startswith(tuple(prefixes)) or name in prefixes:
            return fam
    return None


def family_colours(estimators: Sequence[str]) -> Dict[str, tuple]:
    """estimator -> RGB: shades of its family's map, distinct hues for names of no known family."""
    out: Dict[str, tuple] = {}
    for fam, cmap, _ in FAMILY_RULES:
        members = [e for e in estimators if family(e) == fam]
        cm = colormaps[cmap]
        spots = [0.7] if len(members) == 1 else np.linspace(0.9, 0.45, len(members))
        for e, s in zip(members, spots):
            out[e] = tuple(float(c) for c in cm(float(s))[:3])
    unknown = [e for e in estimators if e not in out]
    if unknown:  # hues spread evenly; husl starts at red, between the families' hues
        for e, c in zip(unknown, sns.husl_palette(len(unknown), h=0.02, s=0.9, l=0.55)):
            out[e] = tuple(float(x) for x in c)
    return out


#: markers telling apart the members of one family where a plot colours by family
MEMBER_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def family_palette(estimators: Sequence[str]) -> Dict[str, tuple]:
    """estimator -> one colour per family (its map's middle shade): for plots with more estimators than a
    reader can tell apart by shade, where a marker (:func:`member_markers`) or an axis label names each."""
    out = {}
    for e in estimators:
        fam = family(e)
        cmap = next((c for f, c, _ in FAMILY_RULES if f == fam), None)
        out[e] = tuple(float(c) for c in colormaps[cmap](0.7)[:3]) if cmap else family_colours([e])[e]
    return out


def member_markers(estimators: Sequence[str]) -> Dict[str, str]:
    """estimator -> a marker, distinct among the members of its family."""
    seen: Dict[Optional[str], int] = {}
    out = {}
    for e in estimators:
        i = seen.get(family(e), 0)
        seen[family(e)] = i + 1
        out[e] = MEMBER_MARKERS[i % len(MEMBER_MARKERS)]
    return out


def palette(res: Results) -> Dict[str, tuple]:
    """estimator -> colour, the same in every plot of the report."""
    return family_colours(estimator_order(res))


# -- provenance ----------------------------------------------------------------------------------

def short_commit(commit) -> str:
    commit = str(commit or "?")
    return commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")


def _each_part(env: dict, key: str, last: str) -> str:
    """``last`` where every command that ran tasks in the folder had the same ``key``; else each value with the
    tasks run under it ("Intel(R) Xeon(R) Processor (600 tasks) + AMD EPYC (4 tasks)")."""
    counts = tasks_by(env, key)
    if len(counts) < 2:
        return last
    return " + ".join(f"{value} ({n} task{'s' if n != 1 else ''})" for value, n in counts.items())


def provenance(env: dict) -> str:
    """One line: preset, seeds, epochs, device, library versions, data sha256, commit, date. A folder made by
    several commands names every machine and library version its tasks ran on, and how many commits."""
    grid = env.get("grid") or {}
    seeds = ",".join(str(s) for s in grid.get("seeds", [])) or "?"
    device = env.get("device", "?")
    name = _each_part(env, "device_name", env.get("device_name") or env.get("cpu_name") or "?")
    sha = str(env.get("data_sha256") or "?")[:12]
    commits = len(tasks_by(env, "git_commit"))
    commit = (f"commit {short_commit(env.get('git_commit'))}"
              + (f" + {commits - 1} earlier (Run lists each part)" if commits > 1 else ""))
    return (f"preset {env.get('preset', '?')} · seeds {seeds} · {grid.get('epochs', '?')} epochs · "
            f"{device}: {name} · torch {_each_part(env, 'torch', str(env.get('torch', '?')))}, "
            f"pyro {_each_part(env, 'pyro', str(env.get('pyro', '?')))}, "
            f"python {env.get('python', '?')} · data sha256 {sha} · {commit} · {env.get('date', '?')}")


def parts_lines(parts: List[dict], search: bool = False) -> List[str]:
    """The commands that made a folder (:func:`bench.core.provenance.run_parts`), when more than one did: each
    with its task count, commit and threads, and its machine and torch where the commands differ in them.
    ``search``: every command of a search adds or continues settings (it lists no tasks)."""
    parts = [p for p in parts if search or p.get("tasks_run") or p is parts[-1]]
    if len(parts) < 2:
        return []
    differ = [k for k in ("device_name", "torch") if len({str(p.get(k)) for p in parts if p.get(k)}) > 1]
    lines = [f"Made in {len(parts)} parts (" + ("each command searched the settings it names; " if search else
                                               "a later part ran only what was missing; ")
             + "the cells record their own commit):", ""]
    for p in parts:
        n = len(p.get("tasks_run") or [])
        lines.append(f"- `{p.get('command')}`: " + ("" if search else f"{n} task{'s' if n != 1 else ''}, ")
                     + f"commit {short_commit(p.get('git_commit'))}, "
                     + "".join(f"{'torch ' if k == 'torch' else ''}{p.get(k) or '?'}, " for k in differ)
                     + f"{p.get('threads')} thread(s) per task, {p.get('date')}")
    return lines + [""]


# -- numbers -------------------------------------------------------------------------------------

def missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA or x is pd.NaT


def fmt_ms(x) -> str:
    """Milliseconds: 3 significant digits, never in exponent notation."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def fmt_sig(x, sig=3) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "–" if x is None or math.isnan(x) else "inf"
    return f"{x:.{sig}g}"


def rnd(x, nd=6):
    return None if x is None else round(float(x), nd)


def sig(x, digits=6):
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return x
    return float(f"{x:.{digits}g}")


def num(row, key) -> Optional[float]:
    """A finite float from a row (Series or dict), else None."""
    try:
        v = row[key] if key in row else None
    except (KeyError, TypeError):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# -- lookups several sections make ---------------------------------------------------------------

def load_pyro_table1() -> pd.DataFrame:
    ref = pd.read_csv(PYRO_TABLE1, comment="#")
    ref["aux"] = ref["aux"].map(as_bool)
    return ref


def ok_runs(res: Results) -> pd.DataFrame:
    return res.runs[res.runs.status == "ok"]


def median_seconds_per_epoch(res: Results, estimator: str, aux: bool, labels: int) -> Tuple[Optional[float], int]:
    """(median seconds_per_epoch over the ok seeds, how many), from runs.csv / the run files."""
    r = ok_runs(res)
    v = r[(r.estimator == estimator) & (r.aux == aux) & (r.labels == labels)]["seconds_per_epoch"].dropna()
    return (float(v.median()), len(v)) if len(v) else (None, 0)


def cell_machines(res: Results) -> List[str]:
    """The CPUs or GPUs (device_name of the records) that trained the folder's ok cells; a folder written before
    records named theirs counts as one machine (env.json's)."""
    names = ok_runs(res)["device_name"].dropna().astype(str) if "device_name" in res.runs else pd.Series(dtype=str)
    return sorted(set(names) - {""})


def epoch_time_source(res: Results) -> str:
    """Where a comparison of time per epoch comes from (one home for the choice): ``"cells"``, the cells' own
    seconds per epoch, where every ok cell trained on one machine; else ``"probe"``, the isolated timing probe's
    estimate (:func:`bench.analysis.paired.isolated_epoch_ms`: alone, on one machine), so that no ratio or axis
    divides one CPU's seconds by another's."""
    return "cells" if len(cell_machines(res)) <= 1 else "probe"


def epoch_seconds(res: Results, estimator: str, aux: bool, labels: int) -> Tuple[Optional[float], int]:
    """(seconds per epoch, ok seeds) of a variant at a label count from :func:`epoch_time_source`: the median of
    its cells' own, or the probe's estimate (None where the probe did not time it, e.g. the baseline)."""
    sec, n = median_seconds_per_epoch(res, estimator, aux, labels)
    if epoch_time_source(res) == "cells" or sec is None:
        return sec, n
    probe = isolated_epoch_seconds(res.timing, labels, aux, estimator, res.env.get("device", "cpu"))
    return (probe if math.isfinite(probe) else None), n


def epoch_time_words(res: Results, short: bool = False) -> str:
    """What :func:`epoch_seconds` measured, in words for a caption or an axis (``short``: for a column header)."""
    def threads_text(values) -> str:
        ts = sorted({int(t) for t in values if t is not None and not pd.isna(t)})
        return f"{'/'.join(map(str, ts)) or '?'} thread{'' if ts == [1] else 's'}"

    dev = res.env.get("device", "?")
    if epoch_time_source(res) == "cells":
        threads = list(res.part_provenance.get("cells", {}).get("threads") or {}) or [res.env.get("threads")]
        head = f"{dev}, {threads_text(threads)} a cell"
        return head if short else f"the cells' own seconds per epoch ({head}, median over seeds)"
    t = isolated_timing(res.timing, dev) if len(res.timing) else res.timing
    name = ", ".join(sorted(set(t["device_name"].astype(str)))) if len(t) else "?"
    where = f"{dev} {name}, {threads_text(t['threads'] if 'threads' in t else [])}"
    machines = cell_machines(res)
    return f"isolated timing probe, {where}" if short else (
        f"the isolated timing probe's estimate ({where}; the cells trained on {len(machines)} machines, "
        f"{' and '.join(machines)}, so their own times are not compared)")


def t1_mean(t1: pd.DataFrame, estimator: str, aux: bool, labels: int) -> Tuple[Optional[float], int, Optional[float]]:
    """(mean test accuracy, n ok seeds, 95% half-width) of a variant at a label count from Table 1."""
    if not len(t1):
        return None, 0, None
    sub = t1[(t1.labels == labels) & (t1.estimator == estimator) & (t1.aux == aux)]
    if not len(sub) or sub.iloc[0]["mean"] is None or pd.isna(sub.iloc[0]["mean"]):
        return None, 0, None
    row = sub.iloc[0]
    half = None if row.ci95_halfwidth is None or pd.isna(row.ci95_halfwidth) else float(row.ci95_halfwidth)
    return float(row["mean"]), int(row.n_ok), half


def rank_label_counts(labels: Sequence[int]) -> List[Tuple[int, str]]:
    """[(label count, how it was chosen)]: 3000 and 100 where present, else the largest and the smallest (a
    folder holding one of them only names it plainly, once)."""
    have = sorted({int(l) for l in labels if l is not None and int(l) > 0})
    if not have:
        return []
    out = []
    for want, pick, word in ((RANK_LABELS[0], have[-1], "largest"), (RANK_LABELS[1], have[0], "smallest")):
        if want in have or pick in RANK_LABELS:  # a folder of 100 labels only: "100 labels", not "the largest"
            want = want if want in have else pick
            choice = (want, f"{want} labels")
        else:
            choice = (pick, f"{pick} labels (the {word} label count here; {want} absent)")
        if choice[0] not in [c[0] for c in out]:
            out.append(choice)
    return out
