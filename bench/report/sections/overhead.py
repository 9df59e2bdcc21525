"""Pyro's overhead: per device, estimator and step kind, Pyro's median ms beside the same objective
hand-written in plain PyTorch (timing.csv's ``ref_*`` columns), their ratio, the step's GFLOP and the
reference step's % of the matmul rate. File: ``pyro_overhead.csv`` (empty for folders written before
the probe timed the reference).
"""
from __future__ import annotations

from typing import List

import pandas as pd

from ..common import estimator_order, fmt_ms, fmt_sig, kinds_in, num, rnd
from ..context import Context, Section, Table
from ..data import Results


def has_overhead(res: Results) -> bool:
    t = res.timing
    return bool(len(t)) and "ref_median_ms" in t and bool(t["ref_median_ms"].notna().any())


def table_overhead(res: Results) -> pd.DataFrame:
    """Per device, estimator and step kind: Pyro's median ms beside the hand-written step's.

    The ``sup`` and ``unsup`` steps are the same objective with or without the auxiliary loss, so
    the row measured without it is shown (with it where that is all there is); ``aux`` comes from
    the runs with it. Empty frame when timing.csv has no reference columns (an older folder).
    """
    cols = ["device", "device_name", "estimator", "aux", "step_kind", "pyro_median_ms", "ref_step",
            "ref_median_ms", "pyro_overhead", "gflop", "pct_of_matmul_peak", "matmul_gflops"]
    if not has_overhead(res):
        return pd.DataFrame(columns=cols)
    t = res.timing
    order = {e: i for i, e in enumerate(estimator_order(res))}
    rows = []
    for (dev, name), d in t.groupby(["device", "device_name"], sort=True):
        for est in sorted(set(d.estimator), key=lambda e: (order.get(e, len(order)), e)):
            de = d[d.estimator == est]
            for kind in kinds_in(de.step_kind):
                r = de[de.step_kind == kind].sort_values("aux", kind="stable").iloc[0]
                pyro_ms, ref_ms = num(r, "median_ms"), num(r, "ref_median_ms")
                ratio = num(r, "pyro_overhead")
                if ratio is None and pyro_ms and ref_ms:
                    ratio = pyro_ms / ref_ms
                rows.append({"device": dev, "device_name": name, "estimator": est, "aux": bool(r["aux"]),
                             "step_kind": kind, "pyro_median_ms": rnd(pyro_ms),
                             "ref_step": str(r["ref_step"]) if "ref_step" in r and ref_ms is not None else "",
                             "ref_median_ms": rnd(ref_ms), "pyro_overhead": rnd(ratio, 4),
                             "gflop": rnd(num(r, "gflop"), 5) if ref_ms is not None else None,
                             "pct_of_matmul_peak": rnd(num(r, "pct_of_matmul_peak"), 2),
                             "matmul_gflops": rnd(num(r, "matmul_gflops"), 2)})
    return pd.DataFrame(rows, columns=cols)


def overhead_display(ov: pd.DataFrame) -> pd.DataFrame:
    if not len(ov):
        return pd.DataFrame()
    multi = len(set(zip(ov.device, ov.device_name))) > 1
    rows = []
    for r in ov.itertuples():
        has_ref = r.ref_median_ms is not None and not pd.isna(r.ref_median_ms)
        row = {"device": f"{r.device} ({r.device_name})"} if multi else {}
        row.update({"estimator": r.estimator, "step kind": r.step_kind, "Pyro ms": fmt_ms(r.pyro_median_ms),
                    "reference step": r.ref_step if has_ref else "no hand-written counterpart",
                    "reference ms": fmt_ms(r.ref_median_ms) if has_ref else "–",
                    "Pyro / reference": f"{r.pyro_overhead:.2f}×" if has_ref and not pd.isna(r.pyro_overhead) else "–",
                    "GFLOP": fmt_sig(r.gflop) if has_ref else "–",
                    "% of matmul rate": (f"{r.pct_of_matmul_peak:.0f}%" if has_ref and not pd.isna(r.pct_of_matmul_peak)
                                         else "–")})
        rows.append(row)
    return pd.DataFrame(rows)


def overhead_text(ov: pd.DataFrame) -> List[str]:
    """The headline numbers of the overhead table, one sentence per device."""
    out = []
    for (dev, name), d in ov.groupby(["device", "device_name"], sort=True):
        paired = d.dropna(subset=["pyro_overhead"])
        if not len(paired):
            continue
        parts = []
        enum = paired[(paired.estimator == "enum") & (paired.step_kind == "unsup")]
        if len(enum):
            e = enum.iloc[0]
            parts.append(f"enum's unlabeled step (all ten labels in one batched pass) takes {fmt_ms(e.pyro_median_ms)} ms "
                         f"in Pyro against {fmt_ms(e.ref_median_ms)} ms by hand: **{e.pyro_overhead:.2f}×**")
        lo, hi = paired.loc[paired.pyro_overhead.idxmin()], paired.loc[paired.pyro_overhead.idxmax()]
        parts.append(f"over the {len(paired)} steps with a hand-written twin Pyro costs {lo.pyro_overhead:.2f}× "
                     f"({lo.estimator} {lo.step_kind}) to {hi.pyro_overhead:.2f}× ({hi.estimator} {hi.step_kind}) "
                     f"the reference, median {paired.pyro_overhead.median():.2f}×")
        pct = paired.dropna(subset=["pct_of_matmul_peak"])
        pct = pct[pct.step_kind != "aux"]  # the aux step is one small network: not a compute-bound step
        if len(pct):
            rate = pct.matmul_gflops.dropna()
            best = pct.loc[pct.pct_of_matmul_peak.idxmax()]
            text = (f"the reference steps run at {pct.pct_of_matmul_peak.min():.0f}–{best.pct_of_matmul_peak:.0f}% "
                    f"of the measured matmul rate"
                    + (f" ({rate.iloc[0]:.1f} GFLOP/s)" if len(rate) else ""))
            en = pct[(pct.estimator == "enum") & (pct.step_kind == "unsup")]
            if len(en) and en.iloc[0].pct_of_matmul_peak > 0:
                text += (f"; the enumerated one within {100 / en.iloc[0].pct_of_matmul_peak:.2f}× of the time its "
                         f"matmuls alone would take")
            parts.append(text)
        out.append(f"**{dev} ({name}):** " + "; ".join(parts) + ".")
    return out


def build(ctx: Context) -> Section:
    res = ctx.res
    ov = table_overhead(res)
    ctx.write_table(ov, "pyro_overhead",
                    "Pyro's overhead: Pyro's step over the hand-written plain-PyTorch step (timing probe)")
    sec = Section("overhead", "Pyro's overhead")
    if not len(ov):
        why = ("No timing.csv in this folder." if not len(res.timing) else
               "timing.csv has no reference-step columns (`ref_median_ms`, `pyro_overhead`, `gflop`, "
               "`pct_of_matmul_peak`): this folder was written before the timing probe timed the hand-written "
               "step. Run the preset again into a fresh folder (or with `--force`) to get them.")
        sec.text.append(why)
        return sec
    sec.text.append(
        "Each Pyro step beside the same objective written by hand in plain PyTorch (`ssvae/reference.py`: same "
        "networks and sizes, same batch, plain `torch.optim.Adam`), timed in the same probe right after it. "
        "Pyro / reference is Pyro's overhead; GFLOP counts the dense layers of one step (`ssvae/flops.py`); "
        "% of matmul rate is the reference step's achieved GFLOP/s over the dense matmul rate measured in the same "
        "probe (100% = as fast as its matmuls alone). `sup` and `unsup` rows come from the runs without aux, "
        "`aux` from those with it. Estimators with no hand-written counterpart for a step show none.")
    sec.text += overhead_text(ov)
    sec.tables.append(Table("Pyro's step against the hand-written step (median ms)", overhead_display(ov),
                            "pyro_overhead"))
    return sec
