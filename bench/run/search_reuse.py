"""A search trial whose seeds a grid has already run: their curves, not a second training (``bench search --reuse``).

A search's first trial of each setting is its preset's own setting (``bench.run.tune.default_params``), and a grid
may have run that setting already, seed for seed: the ``table1`` reference's cells are the ``search-table1``
preset's first trials. Trained again they give the same numbers: the search's trace + aux, gumbel + aux and
gumbel-st + aux trial 0 (trained on this project's Intel Xeon machine) matched results/reference/table1-cpu's cells
of the same CPU to the last bit, every epoch's validation accuracy and loss of seeds 0-2. So with ``--reuse FOLDER``
a trial's seed takes a finished cell of FOLDER when the harness would reuse that cell for it: the same
configuration (``RunConfig``, seed included), the same four MNIST files and the same torch and pyro
(:func:`bench.core.store.identity_difference`; another commit is no reason), status ``ok``, a curve for every
epoch. A trial uses them only when every seed has one; its epochs then go to the pruner as a resumed trial's do,
and its records name the cell they came from (``reused_from``). Another CPU may round differently: a cell trained
on one is the same cell to the harness, not the same bits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

from ssvae import RunConfig

from ..core.schema import Folder
from ..core.store import identity_difference, read_result
from .grid import cell_id


def finished_cells(folders: Sequence[Path], cfgs: Dict[int, RunConfig], ident: Optional[dict]) -> Dict[int, dict]:
    """``{seed: {"epoch": epochs, "curves": [...], "reused_from": path, "reused_device": the cell's CPU}}`` when every
    seed of ``cfgs`` has a finished cell in one of ``folders`` that stands for it (the first folder that has one);
    else {}."""
    found = {}
    for seed, cfg in cfgs.items():
        for folder in folders:
            path = Folder(Path(folder)).runs / f"{cell_id(cfg)}.json"
            record, problem = read_result(path)
            curves = (record or {}).get("curves") or []
            if (problem is None and ident is not None and record.get("status") == "ok"
                    and record.get("config") == cfg.to_dict() and identity_difference(record, ident) is None
                    and [row.get("epoch") for row in curves] == list(range(1, cfg.epochs + 1))):
                found[seed] = {"epoch": cfg.epochs, "curves": curves, "reused_from": str(path),
                               "reused_device": record.get("device_name")}
                break
        else:
            return {}
    return found
