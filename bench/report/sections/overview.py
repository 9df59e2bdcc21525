"""Run: the command, the grid, the environment, what became of every cell, the compute the cells took."""
from __future__ import annotations

from typing import Optional

from ...core.provenance import run_parts
from ...core.schema import CONTENDED_LOAD, DONE_STATUSES, Folder, cores
from ..common import parts_lines
from ..context import Context, Section
from ..frames import protocols, status

#: one sentence per training protocol, in ssvae/train.py's words
PROTOCOL_WORDS = {
    "bench": "bench (ours: an unlabeled batch takes the ELBO step only, no empty auxiliary step, and an epoch's last "
             "labeled batch may be partial)",
    "pyro": "pyro (Pyro's loop exactly: with the auxiliary loss every unlabeled batch also takes an empty "
            "model_classify step, which moves Adam by its momentum; the batch size divides the label count)",
}


def protocol_line(ctx: Context) -> str:
    """'Protocol: bench (ours: ...).', saying so when the folder predates the protocol column."""
    names = protocols(ctx.res)
    old = "protocol" not in ctx.res.runs or not ctx.res.runs["protocol"].notna().any()
    return ("Protocol: " + "; ".join(PROTOCOL_WORDS.get(p, p) for p in names)
            + (" — runs.csv has no protocol column (a folder written before the option), and bench's was then the "
               "only loop" if old else "") + ".")


def compute_minutes(ctx: Context):
    """(training minutes summed over the ok cells, workers, minutes per worker) or None."""
    r = ctx.res.runs
    sec = r.loc[r.status == "ok", "train_seconds"].dropna()
    if not len(sec):
        return None
    workers = _workers(ctx)
    return float(sec.sum()) / 60, workers, float(sec.sum()) / 60 / workers


def _workers(ctx: Context) -> int:
    """The run's workers (env.json, else its grid), at least one."""
    return int(ctx.env.get("workers") or ctx.grid.get("workers") or 1)


def _hours(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def _minutes(minutes: float) -> str:
    return f"{minutes:.0f} minute{'' if round(minutes) == 1 else 's'}"


def run_cost_line(ctx: Context) -> Optional[str]:
    """What the run cost: the cells' training minutes, and the wall time with any task of the grid running
    (``Results.busy_seconds``; else the lower bound the training minutes give). The report's Run section
    and ``tables/run_cost.md`` (which the README quotes) say it in these words."""
    cost, busy = compute_minutes(ctx), ctx.res.busy_seconds
    if not cost and not busy:
        return None
    preset = ctx.env.get("preset", "?")
    workers = _workers(ctx)
    text = (f"The `{preset}` preset's cells trained for {_minutes(cost[0])} in all (runs.csv `train_seconds`; "
            f"evaluation and probes not counted)" if cost else f"No cell of the `{preset}` preset has finished yet")
    if busy:
        text += (f"; the whole run, every task included, took {_hours(busy)} of wall time with {workers} "
                 f"worker{'s' if workers > 1 else ''} (time with at least one of its tasks running: pauses between "
                 f"resumed sessions not counted)")
    else:
        text += f": at least {_minutes(cost[2])} of wall time with {workers} worker{'s' if workers > 1 else ''}"
    status_ = ctx.frame(status)[0].iloc[0]
    if status_["missing"]:
        text += f", and {int(status_['missing'])} of its {int(status_['expected'])} cells are still to run"
    est = ctx.env.get("estimate") or {}
    if (busy and isinstance(est.get("seconds"), (int, float)) and not ctx.env.get("earlier_runs")
            and est.get("tasks") == len(ctx.env.get("tasks_run") or [])):
        # the estimate the run printed before it started (bench/run/estimate.py), where one run made the folder
        text += (f". Its estimate before it started: {_hours(est['seconds'])} for those {est['tasks']} tasks "
                 f"({est.get('priced_on') or 'no calibration'}); measured/estimated {busy / est['seconds']:.2f}")
    return text + "."


def beside_line(ctx: Context):
    """How many cells ran alone: runs.csv ``beside`` (tasks of this folder overlapping in time) and
    ``other_cpu_load`` (cores anything else kept busy meanwhile); None for a folder without them."""
    r = ctx.res.runs
    if "beside" not in r or not r["beside"].notna().any():
        return None
    r = r[r["beside"].notna()]
    n_beside = int((r["beside"] > 0).sum())
    load = r["other_cpu_load"].dropna() if "other_cpu_load" in r else r["beside"].iloc[:0]
    shared = n_beside > 0 or (len(load) and load.max() >= CONTENDED_LOAD)
    return (f"Beside what: {len(r) - n_beside} of {len(r)} finished cells ran with no other task of this folder, "
            f"{n_beside} beside others (up to {int(r['beside'].max())}; runs.csv `beside`; a task still running "
            f"when the tables were written is not counted)"
            + (f"; anything else on the machine kept a median of {cores(load.median())} busy while a cell ran "
               f"(`other_cpu_load`, up to {cores(load.max())})" if len(load) else "")
            + (". Cell wall times are therefore not isolated measurements; the verdicts' times come from the timing "
               "probe." if shared else ". The verdicts' times come from the timing probe all the same."))


def flush_line(ctx: Context):
    """In how many finished cells subnormal floats were flushed to zero (runs.csv ``flush_denormal``); None for a
    folder none of whose records says (all written before the project flushed them)."""
    r = ctx.res.runs
    if "flush_denormal" not in r or not r["flush_denormal"].notna().any():
        return None
    done = r[r["status"].isin(DONE_STATUSES)]
    flushed = int((done["flush_denormal"] == True).sum())  # noqa: E712 (a column of True, False and NaN)
    rest = len(done) - flushed
    return (f"Subnormal floats: flushed to zero in {flushed} of {len(done)} finished cells (runs.csv "
            f"`flush_denormal`)" + (f"; the other {rest} ran without it (written before the project flushed them, "
                                    "or on a CPU that cannot), so a cell whose arithmetic met subnormals may have "
                                    "slowed: docs/results.md, \"Subnormal floats\"" if rest else "") + ".")


def build(ctx: Context) -> Section:
    env, grid, res = ctx.env, ctx.grid, ctx.res
    s = ctx.frame(status)[0].iloc[0]
    n_absent = int(s["missing"])
    sec = Section("run", "Run", text=[
        f"Command: `{env.get('command', '?')}`",
        f"Grid: estimators {', '.join(map(str, grid.get('estimators', []))) or '?'}"
        f"{' + supervised baseline' if grid.get('baseline') else ''}; aux "
        f"{', '.join(str(a).lower() for a in grid.get('aux', [])) or '?'}; labels "
        f"{', '.join(map(str, grid.get('labels', []))) or '?'}; seeds "
        f"{', '.join(map(str, grid.get('seeds', []))) or '?'}; {grid.get('epochs', '?')} epochs"
        f"{'' if not grid.get('steps_per_epoch') else ' of ' + str(grid['steps_per_epoch']) + ' steps'}.",
        protocol_line(ctx),
        f"Environment: python {env.get('python', '?')}, torch {env.get('torch', '?')}, pyro {env.get('pyro', '?')}, "
        f"torchvision {env.get('torchvision', '?')}; {env.get('platform', '?')}; device {env.get('device', '?')} "
        f"({env.get('device_name', '?')}); CPU {env.get('cpu_name', '?')}, {env.get('threads', '?')} threads; "
        f"data sha256 `{env.get('data_sha256', '?')}`; commit `{env.get('git_commit', '?')}`; "
        f"date {env.get('date', '?')}.",
        f"**Cells: {int(s['expected'])} expected, {int(s['present'])} present, {n_absent} absent (no result file); "
        + ", ".join(f"{int(s[k])} {k}" for k in s.index
                    if k not in ("expected", "present", "unexpected", "missing")
                    and (s[k] or k in ("ok", "failed", "diverged", "corrupt")))
        + (f"; {int(s['unexpected'])} not in the grid" if s["unexpected"] else "") + ".**"])
    cost = run_cost_line(ctx)
    if cost:
        sec.text.append(f"Compute: {cost}")
    for line in (beside_line(ctx), flush_line(ctx)):
        if line:
            sec.text.append(line)
    probes = env.get("expected_probes")
    if isinstance(probes, list) and probes:
        have = {p.stem for p in Folder(res.root).probes.glob("*.json")}
        absent = [str(p) for p in probes if str(p) not in have]
        sec.text.append(f"Probes (timing, common-checkpoint variance): {len(probes)} expected, "
                        f"{len(probes) - len(absent)} present" + (f"; absent: {', '.join(absent)}." if absent else "."))
    parts = [line for line in parts_lines(run_parts(env)) if line]
    if parts:  # the commands that made the folder, last in the section: its list follows
        sec.text.append(parts[0])
        sec.bullets = [line[2:] for line in parts[1:]]
    return sec
