"""The ``python -m bench search`` command: its arguments, and the search a folder holds (the settings of one search,
any of which a command may add; a space that contains the folder's widens it). The search itself:
:mod:`bench.run.search`."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict

import torch

from ssvae import data as ssdata
from ssvae.errors import ConfigError

from ..commands import COMMANDS
from ..core.errors import add_data_args
from ..core.provenance import usable_cpus, versions
from ..core.schema import Folder, grid_union
from ..core.store import OutputLock, atomic_write_json, run_identity
from .harness import add_grid_args, earlier_runs, folder_provenance, grid_from_args
from .search import log_stderr, run_search

#: the grid fields that choose a search's settings: a folder holds any settings of one search
SETTING_FIELDS = ("estimators", "aux", "labels")


def widens(new: Dict, old: Dict) -> bool:
    """Whether the space ``new`` contains ``old``: the same keys, each range reaching at least as far both ways,
    each candidate list holding every earlier candidate."""
    if set(new) != set(old):
        return False
    for key, (kind, *rest) in new.items():
        old_kind, *old_rest = old[key]
        if kind != old_kind or (kind == "range" and not rest[0] <= old_rest[0] <= old_rest[1] <= rest[1]) or (
                kind == "choices" and any(c not in rest[0] for c in old_rest[0])):
            return False
    return True


def merged_grid(prev_env: dict, grid: dict, out: Path) -> dict:
    """The grid env.json keeps when ``grid`` searches more settings of the search already in ``out``: the union of
    their settings and search spaces; an estimator's space that contains the folder's replaces it (a widening:
    the earlier one is kept under ``search.widened``). Any other difference (seeds, epochs, the search table, a
    run field, a space that does not contain the folder's) is another search: refused in one line."""
    prev, grid = json.loads(json.dumps(prev_env.get("grid") or {})), json.loads(json.dumps(grid))  # as env.json has them

    def rest(g: dict) -> dict:
        return {k: ({**v, "space": None, "widened": None} if k == "search" else v) for k, v in g.items()
                if k not in SETTING_FIELDS}

    if not prev.get("search") or rest(prev) != rest(grid):
        raise ConfigError(f"{out} holds another search or grid ({prev_env.get('preset')}): choose another --out")
    space, widened = dict(prev["search"]["space"]), dict(prev["search"].get("widened") or {})
    for est, dims in grid["search"]["space"].items():
        old = space.setdefault(est, dims)
        if old != dims:
            if not widens(dims, old):
                raise ConfigError(f"{out} searched {est} over another space, one this space does not contain: "
                                  f"choose another --out")
            widened[est], space[est] = widened.get(est, []) + [old], dims
    return {**grid_union(prev, grid), "search": {**grid["search"], "space": space, **({"widened": widened} if widened else {})}}


def add_search_parser(sub) -> None:
    p = sub.add_parser("search", help=COMMANDS["search"].help)
    add_grid_args(p, default_preset="search")
    p.add_argument("--workers", type=int, default=1,
                   help="processes running one setting's trials at once (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: the usable CPUs / workers)")
    p.add_argument("--reuse", action="append", default=[], metavar="FOLDER",
                   help="a grid's results folder whose finished cells stand for a trial's seeds where they are the "
                        "same configuration, data, torch and pyro (the preset's own setting, trial 0; repeatable)")
    add_data_args(p)
    p.set_defaults(func=cmd_search)


def cmd_search(args) -> int:
    grid = grid_from_args(args, search=True)
    if not grid.search:
        raise ConfigError(f"preset {grid.name} has no [search] table: it is a grid (python -m bench run)")
    if len(grid.seeds) < 3:
        raise ConfigError(f"a search needs at least 3 seeds per trial (got {len(grid.seeds)}): --seeds 3")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1 (got {args.threads})")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    out = Path(args.out or f"results/{grid.name}-{grid.device.replace(':', '')}")
    for folder in args.reuse:
        if not Folder(Path(folder)).runs.is_dir():
            raise ConfigError(f"--reuse {folder}: no runs/ folder there (give a grid's results folder)")
    root = ssdata.locate_mnist(args.data_dir, download=False if args.no_download else None)
    hashes = ssdata.check_raw(root)
    threads = args.threads or max(1, usable_cpus() // args.workers)
    torch.set_num_threads(threads)
    env_path = Folder(out).env
    with OutputLock(out):  # env.json read, merged and written by one command at a time
        env = folder_provenance(grid, hashes, threads)
        if env_path.is_file():
            env["grid"] = merged_grid(json.loads(env_path.read_text()), env["grid"], out)
            env["earlier_runs"] = earlier_runs(env_path)
        atomic_write_json(env_path, env)
    ran = run_search(grid, grid.search, out, str(root), log=log_stderr, workers=args.workers, threads=threads,
                     reuse=[Path(f) for f in args.reuse], ident=run_identity(hashes, versions()))
    print(f"bench: search {grid.name}: {ran} trial(s) run -> {out} (choose with: python -m bench tune {out})",
          file=sys.stderr)
    return 0
