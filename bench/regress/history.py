"""History of step times per machine, as asv keeps it: one record per regress run, drawn over commits.

Every ``regress run`` and ``regress ab`` writes one JSON record to
``results/history/<machine>/<UTC time>-<commit>-<kind>.json`` (``<machine>``: the fingerprint
name of ``bench.provenance.machine_fingerprint``): the commit, the date, the fingerprint,
the library versions, the median milliseconds per case (``ESTIMATOR:KIND`` / ``ref:KIND``),
the ratios and the peak memory. An A/B of two commits gives a point to each (the base's
medians at the base's commit, the head's at the head's); an A/B of two environments at one
commit is kept, labelled by its versions, and drawn only in the table.

``python -m bench regress history`` writes ``history.md`` (a table: case x commit, median
ms) and ``history.png`` (a column per step kind, a line per case, commits in history order:
median ms; ms over the hand-written enumerated step ``ref:unsup-enum`` of the same runs, which
cancels most of the machine's load; peak MiB) into the machine's folder. Absolute milliseconds of runs made at different
times on a shared machine move with its load (up to 2x here): a step shows as slower in the
history when it stays up over several commits; the A/B is the test.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from ..provenance import machine_fingerprint

REPO = Path(__file__).resolve().parents[2]
HISTORY = REPO / "results" / "history"
#: the case other cases are divided by in the load-robust panel (in the short A/B and the full one)
YARDSTICK = "ref:unsup-enum"


def machine() -> dict:
    return machine_fingerprint()


def append(record: dict, root: Path = HISTORY) -> Path:
    """Write one record (``kind``, ``commit``, ``cases``...) with the date and the machine; returns its path."""
    fp = machine()
    now = _dt.datetime.now(_dt.timezone.utc)
    record = {"date": now.isoformat(timespec="seconds"), "machine": fp["name"], "fingerprint": fp, **record}
    commit = re.sub(r"[^0-9a-z-]", "", str(record.get("commit", "unknown"))[:10])
    stem = f"{now.strftime('%Y%m%dT%H%M%S')}-{commit}-{record.get('kind', 'run')}"
    path = root / fp["name"] / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while path.exists():  # two records in one second
        n += 1
        path = path.with_name(f"{stem}-{n}.json")
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def load(machine_name: str, root: Path = HISTORY) -> List[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / machine_name).glob("*.json"))]


def _commit_order(commits: List[str]) -> Dict[str, int]:
    """Position of each commit in git history (oldest first); unknown commits after, by first appearance."""
    order = {}
    try:
        out = subprocess.run(["git", "rev-list", "--reverse", "--all"], cwd=REPO, capture_output=True, text=True,
                             timeout=30).stdout.split()
        order = {sha: i for i, sha in enumerate(out)}
    except (OSError, subprocess.SubprocessError):
        pass
    pos = {}
    for i, c in enumerate(commits):
        base = c.split("-")[0]
        full = next((sha for sha in order if sha.startswith(base)), None) if base else None
        pos[c] = (order[full] if full else len(order) + i, 0 if not c.endswith("dirty") else 1)
    return pos


def points(records: List[dict]) -> Dict[str, Dict[str, dict]]:
    """{commit label: {case: {"ms": median over records, "peak_mb": ...}}} from git-commit records."""
    import statistics

    acc: Dict[str, Dict[str, Dict[str, list]]] = {}
    for rec in records:
        if rec.get("sides") == "env":
            continue
        for side in rec.get("points", []):
            for case, v in side["cases"].items():
                slot = acc.setdefault(side["commit"], {}).setdefault(case, {"ms": [], "peak_mb": []})
                if v.get("ms") is not None:
                    slot["ms"].append(v["ms"])
                if v.get("peak_mb") is not None:
                    slot["peak_mb"].append(v["peak_mb"])
    return {c: {case: {k: (statistics.median(x) if x else None) for k, x in v.items()} for case, v in cases.items()}
            for c, cases in acc.items()}


def draw(machine_name: str, root: Path = HISTORY, out_dir: Optional[Path] = None) -> Dict[str, Path]:
    """history.md and history.png for one machine; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load(machine_name, root)
    if not records:
        raise FileNotFoundError(f"no history records in {root / machine_name}")
    pts = points(records)
    pos = _commit_order(list(pts))
    commits = sorted(pts, key=lambda c: pos[c])
    cases = sorted({case for c in pts.values() for case in c})
    out_dir = out_dir or root / machine_name
    out_dir.mkdir(parents=True, exist_ok=True)

    label = {c: c[:7] + ("-dirty" if c.endswith("dirty") else "") for c in commits}
    lines = [f"# Step-time history on {machine_name}", "",
             f"{len(records)} record(s); median ms per step (peak MiB per step in parentheses), commits oldest first.",
             "", "| case | " + " | ".join(label[c] for c in commits) + " |", "|---|" + "---|" * len(commits)]
    for case in cases:
        cells = []
        for c in commits:
            v = pts[c].get(case)
            cells.append("-" if not v or v["ms"] is None else
                         f"{v['ms']:.1f}" + (f" ({v['peak_mb']:.0f})" if v.get("peak_mb") is not None else ""))
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    env_runs = [r for r in records if r.get("sides") == "env"]
    if env_runs:
        lines += ["", "Environment A/Bs (same commit, two environments): B/A per case", ""]
        for r in env_runs:
            desc = f"{r['date']} {r.get('a', {}).get('describe', 'A')} vs {r.get('b', {}).get('describe', 'B')}"
            ratios = ", ".join(f"{k} {v['ratio']:.2f}" for k, v in sorted(r.get("ratios", {}).items())
                               if v.get("ratio") is not None)
            lines.append(f"- {desc}: {ratios}")
    md = out_dir / "history.md"
    md.write_text("\n".join(lines) + "\n")

    kinds = ["sup", "unsup", "aux"]
    # load-robust view: each case over the hand-written enumerated step measured in the same runs
    for c in commits:
        yard = (pts[c].get(YARDSTICK) or {}).get("ms")
        for v in pts[c].values():
            v["rel"] = v["ms"] / yard if yard and v.get("ms") is not None else None
    panels = (("ms", "median ms per step (log)"), ("rel", f"ms / {YARDSTICK} ms, same runs"),
              ("peak_mb", "peak MiB per step"))
    fig, axes = plt.subplots(len(panels), len(kinds), figsize=(5 * len(kinds), 11), sharex=True, squeeze=False)
    x = list(range(len(commits)))
    for col, kind in enumerate(kinds):
        for row, (key, ylabel) in enumerate(panels):
            ax = axes[row][col]
            for case in cases:
                est, _, k = case.partition(":")
                if k != kind and not (est == "ref" and k.startswith(kind)):
                    continue
                ys = [(pts[c].get(case) or {}).get(key) for c in commits]
                if all(v is None for v in ys):
                    continue
                style = "--" if est == "ref" else (":" if est.endswith("-jit") else "-")
                ax.plot(x, [float("nan") if v is None else v for v in ys], style, marker="o", label=case)
            if key == "ms":
                ax.set_yscale("log")
                ax.set_title(f"{kind} steps")
            elif key == "peak_mb":
                ax.set_ylim(bottom=0)
            ax.set_ylabel(ylabel)
            ax.set_xticks(x, [label[c] for c in commits], rotation=45, ha="right")
            ax.grid(alpha=0.3)
            if row == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"step time and peak memory over commits, {machine_name} "
                 f"(dashed: hand-written reference, dotted: Pyro JIT)")
    fig.tight_layout()
    png = out_dir / "history.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return {"table": md, "png": png}
