"""Tuning: a run made with ``python -m bench run ... --tuned FILE`` records the choice file in env.json
(``tuned``: the file, its sha256, the metric the choices were selected on, and the values it set per
estimator; :func:`bench.run.tune.load_choices`). This section names the file and the chosen values; a run
without ``--tuned`` has no such section. File: ``tuned.csv``.
"""
from __future__ import annotations

import json
from typing import Optional

import pandas as pd

from ..common import short_commit
from ..context import Context, Section, Table


def frame(tuned: dict) -> pd.DataFrame:
    """One row per (estimator, setting): the chosen value (``estimator``: an estimator, or one setting of it,
    ``gumbel+aux_L3000``, for a file that chooses per setting)."""
    rows = []
    for est, values in sorted((tuned.get("chosen") or {}).items()):
        for key, value in sorted((values or {}).items()):
            rows.append({"estimator": est, "setting": key,
                         "value": value if isinstance(value, (int, float, str)) else json.dumps(value, sort_keys=True)})
    return pd.DataFrame(rows, columns=["estimator", "setting", "value"])


def _source(source) -> str:
    """The tuning run the file came from (``tuned.json``'s ``source``: its last command, commit, date, CPU)."""
    if not isinstance(source, dict):
        return f", from `{source}`" if source else ""
    where = ", ".join(f"{key} {short_commit(source[key]) if key == 'commit' else source[key]}"
                      for key in ("commit", "date", "device") if source.get(key))
    return f", written by `{source.get('command', '?')}`" + (f" ({where})" if where else "")


def build(ctx: Context) -> Optional[Section]:
    tuned = ctx.env.get("tuned")
    if not isinstance(tuned, dict):
        return None
    df = frame(tuned)
    ctx.write_table(df, "tuned", f"Values chosen by the tuning run ({tuned.get('file', '?')})")
    sec = Section("tuning", "Tuning")
    sec.text.append(
        f"This run applied the choices of a tuning run: `--tuned {tuned.get('file', '?')}` (sha256 "
        f"`{str(tuned.get('sha256', '?'))[:12]}`), selected on `{tuned.get('selected_on') or '?'}` (validation "
        "data only, never test accuracy; `bench/run/tune.py`)"
        + _source(tuned.get("source")) + ". The chosen values below override the "
        "preset's per-estimator options; `--set` still overrides them.")
    if tuned.get("without_choice"):
        sec.text.append(f"The file chooses nothing for {', '.join(tuned['without_choice'])}: those cells ran with the "
                        "preset's values.")
    if len(df):
        sec.tables.append(Table("Chosen values", df.astype({"value": str}), "tuned"))
    else:
        sec.text.append("The file chose no values.")
    return sec
