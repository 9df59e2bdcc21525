"""What early stopping would have changed, replayed on finished validation curves.

``patience`` (``ssvae.config.RunConfig``) ends a cell once that many epochs have passed since its best validation
accuracy. Before a long grid runs with it, :func:`replay` takes the full-length runs of earlier folders (grid cells
and a search's trials that ran every epoch) and, for each candidate patience, ends every curve where the rule
(:func:`ssvae.train.patience_spent`) would have: how many cells would then have reported another best epoch, how
much best validation accuracy they would have given up, and the share of epochs run. Validation accuracy only: the
test accuracy in a reference's curves is never read, so the choice of patience is made on validation data.

    python -m bench.analysis.patience results/reference/table1-cpu results/search-table1-cpu --patience 10 20 40 60
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import pandas as pd

from ssvae.train import patience_spent

from ..core.schema import Folder
from ..core.stats import variant_label
from ..core.store import read_result

PATIENCE_COLUMNS = ["variant", "patience", "cells", "changed", "valid_lost_max", "epochs_run_share"]


def end_and_best(valid: Sequence[float], patience: Optional[int]) -> Tuple[int, int]:
    """(the epoch after which ``patience`` ends a run with these validation accuracies, its best epoch by then):
    the first best wins, as in the training loop."""
    best, best_epoch = float("-inf"), 0
    for epoch, acc in enumerate(valid, start=1):
        if acc > best:
            best, best_epoch = acc, epoch
        if patience_spent(epoch, best_epoch, patience):
            return epoch, best_epoch
    return len(valid), best_epoch


def full_curves(folders: Iterable[Path]) -> List[Tuple[str, List[float]]]:
    """(variant, validation accuracy per epoch) of every record under ``folders``' runs/ that trained all its
    epochs (a cell ``ok``, a search trial not pruned) without early stopping of its own, each run once: a search
    trial whose seeds are a grid's cells (``reused_from``: ``bench search --reuse``), or that trained them again to
    the same numbers (search-table1's trial 0 and the table1 grid), is that run, not another."""
    out, seen = [], set()
    for folder in folders:
        for path in sorted(Folder(Path(folder)).runs.glob("*.json")):
            record, _ = read_result(path)
            if (not record or record.get("status") != "ok" or record.get("kind") not in (None, "train", "search")
                    or record.get("reused_from")):
                continue
            cfg, curves = record.get("config") or {}, record.get("curves") or []
            if cfg.get("estimator") is None or cfg.get("patience") or len(curves) != cfg.get("epochs"):
                continue
            run = (variant_label(cfg["estimator"], bool(cfg.get("aux"))), tuple(float(c["valid_acc"]) for c in curves))
            if run not in seen:
                seen.add(run)
                out.append((run[0], list(run[1])))
    return out


def replay(curves: List[Tuple[str, List[float]]], patiences: Sequence[int]) -> pd.DataFrame:
    """One row per variant and patience: cells, how many would have reported another best epoch, the most best
    validation accuracy one of them would have given up, and the epochs run over the epochs of the full runs."""
    rows = []
    for variant in sorted({v for v, _ in curves}):
        mine = [(valid, end_and_best(valid, None)[1]) for v, valid in curves if v == variant]  # each full run's best
        for patience in patiences:
            ran = changed = 0
            lost = 0.0
            for valid, full_best in mine:
                end, best_epoch = end_and_best(valid, patience)
                ran += end
                if best_epoch != full_best:
                    changed += 1
                    lost = max(lost, valid[full_best - 1] - valid[best_epoch - 1])
            full = sum(len(valid) for valid, _ in mine)
            rows.append({"variant": variant, "patience": patience, "cells": len(mine), "changed": changed,
                         "valid_lost_max": round(lost, 4), "epochs_run_share": round(ran / full, 3)})
    return pd.DataFrame(rows, columns=PATIENCE_COLUMNS)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.analysis.patience", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="results folders whose full-length runs to replay (grids or searches)")
    p.add_argument("--patience", type=int, nargs="+", default=[5, 10, 20, 40, 60], help="candidate patiences")
    args = p.parse_args(argv)
    missing = [f for f in args.folders if not Folder(Path(f)).runs.is_dir()]
    if missing or min(args.patience) < 1:
        print(f"bench: error: {'no runs/ folder in ' + ', '.join(missing) if missing else 'patience must be >= 1'}",
              file=sys.stderr)
        return 2
    curves = full_curves(Path(f) for f in args.folders)
    print(f"{len(curves)} full-length runs from {', '.join(args.folders)} (validation accuracy only)")
    print(replay(curves, args.patience).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
