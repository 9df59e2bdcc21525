"""Running one task of a grid: the task kinds (``KINDS``), the training cell, and the dispatch that writes its result.

``run_task(spec, out_dir)`` is what every executor calls, in a fresh process (Pyro's param
store is global). The result file is written atomically when the task ends, whatever the
outcome: ``ok``, ``diverged`` (NaN/inf loss, with the step) or ``failed`` (with the error).

The ``train`` kind's runner (:func:`run_train`) is here, with the state that lets a cell cut short resume
from its last finished epoch (:class:`SavedState`); the probes' runners are in
``bench.run.gradient_probe`` (``common``) and ``bench.run.timing_probe`` (``timing``), the test-only fault
hook in ``bench.run.faults``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ssvae import RunConfig
from ssvae import data as ssdata
from ssvae.errors import DivergedError
from ssvae.evaluate import EvalPlan
from ssvae.estimators import get_estimator
from ssvae.train import Trainer, check_resume, set_seed, train

from .cost import (EVAL_STEPS, PART_STEPS, common_cost, config_epochs, evaluation_epochs, own_probe_cost,
                   train_cost)
from .faults import _fault_hook
from .gradient_probe import _probe_batches, _references, _variance_rows, run_common
from ..core.numerics import flush_denormals
from ..core.provenance import cpu_times, device_name, git_commit, host, identity, other_cpu_load, versions
from ..core.schema import ANALOGY_SUFFIX, Folder
from ..core.store import _json_default, atomic_write_bytes, owns, read_checksummed, write_checksummed, write_record
from ..core.tables import span
from ..core.taskdata import Progress, _load_data
from .timing_probe import run_timing


# -- train -----------------------------------------------------------------------------------
#: bump when what a cell's resume state holds, or how it is read, changes
CELL_STATE_VERSION = 1


class SavedState:
    """A run's state after its last finished epoch, on disk: ``OUT/cache/<kind>/<key>.pt`` (``kind``: ``train``, a
    grid's cell; ``search``, a search's trial, its seeds' states in one file).

    A cell of a long grid may outlast the session that runs it (a session ends by killing its
    processes); with this state it continues from its last finished epoch instead of epoch 1, with
    the record it would have had uninterrupted (timings aside). ``key`` hashes what the state depends
    on: the cell's spec (config, probe settings, evaluation plan), the data and the torch and pyro
    versions, as :class:`bench.run.gradient_probe._TrajectoryCache`'s does. The file holds ``ssvae.train``'s
    state (its ``on_epoch_end``) and the own-trajectory probe rows taken so far; it is rewritten after
    every epoch, atomically and behind its sha256 (:func:`bench.core.store.write_checksummed`), and deleted
    when the cell ends ok or diverged (kept when it fails: a rerun resumes). A file that fails its
    checksum, does not load, belongs to another run or fails the caller's check is deleted, and the run
    starts from epoch 1. A cache: deleting it changes no result, only how long a cut-short run takes.
    """

    def __init__(self, root: Optional[Path], spec: dict, data_sha256: str, kind: str = "train"):
        self.path, self.what = None, ""
        if root is not None:
            what = {"v": CELL_STATE_VERSION, "spec": {k: v for k, v in spec.items() if not k.startswith("_")},
                    "data": data_sha256, "versions": versions()}
            self.what = json.dumps(what, sort_keys=True, default=str)
            self.path = Path(root) / kind / f"{hashlib.sha256(self.what.encode()).hexdigest()[:16]}.pt"

    def load_parts(self, check: Callable[[dict], None]) -> Optional[dict]:
        """What :meth:`save_parts` saved, once ``check(parts)`` has not raised; or None (an unusable file deleted)."""
        body = None if self.path is None else read_checksummed(self.path)
        if body is None:
            return None
        try:
            blob = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
            if blob.pop("what") != self.what:
                raise ValueError("the state of another run")
            check(blob)
            return blob
        except Exception:  # whatever is wrong with it, a cache file is rebuilt, never trusted
            self.delete()
            return None

    def save_parts(self, **parts) -> None:
        buf = io.BytesIO()
        torch.save({"what": self.what, **parts}, buf)
        try:
            write_checksummed(self.path, buf.getvalue())
        except OSError:  # a state that cannot be written costs a cut-short run its epochs, not results
            pass

    def load(self, cfg: RunConfig, data, evaluation: EvalPlan) -> Optional[Tuple[dict, List[dict]]]:
        """A cell's (training state, probe rows so far) to resume from, or None."""
        blob = self.load_parts(lambda parts: check_resume(parts["train"], cfg, data, evaluation))
        return None if blob is None else (blob["train"], json.loads(blob["rows"]))

    def save(self, state: dict, rows: List[dict]) -> None:
        self.save_parts(train=state, rows=json.dumps(rows, default=_json_default))

    def delete(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def run_train(spec: dict, data_dir, progress: Progress = None, cache_dir: Optional[Path] = None) -> dict:
    """Train one cell, probing its own trajectory at its checkpoints; with ``cache_dir``, a cell cut short
    earlier resumes from its last finished epoch (:class:`SavedState`; the record then says
    ``resumed_from_epoch``)."""
    cfg = RunConfig.from_dict(spec["config"])
    data = _load_data(cfg, data_dir)
    checkpoints = set(spec.get("checkpoints", []))
    n_samples = spec.get("n_samples", 20)
    kind = get_estimator(cfg.estimator).kind
    rows: List[dict] = []
    probe_batches = _probe_batches(data, cfg.batch_size, spec.get("step_kinds", ("unsup", "sup")))

    def on_step(trainer: Trainer, step: int):
        # The estimator as its run has it: the temperature of this step, the baseline it has trained
        # (restored after every draw: the probe neither resets nor advances it).
        if kind == "ssvae" and step in checkpoints:
            trainer.main.at_step(step)
            refs = _references(trainer, probe_batches, spec.get("reference_draws", 200))
            rows.extend(_variance_rows(trainer.main, trainer, probe_batches, n_samples, refs,
                                       spec.get("bootstrap", 1000), spec.get("draws", "loop"),
                                       estimator=cfg.estimator, aux=cfg.aux,
                                       labels=cfg.labels, seed=cfg.seed, trajectory="own", step=step))

    fault = _fault_hook(spec["id"])

    def hooks(trainer: Trainer, step: int):
        if checkpoints:
            on_step(trainer, step)
        if fault:
            fault(trainer, step)

    out = {"data_sha256": data.sha256}
    evaluation = EvalPlan(**spec.get("evaluation", {}))
    saved_state = SavedState(cache_dir, spec, data.sha256)
    resume = saved_state.load(cfg, data, evaluation)
    if resume is not None:
        resume, earlier_rows = resume
        rows.extend(earlier_rows)
        out["resumed_from_epoch"] = resume["epoch"]
        print(f"{spec['id']}: resumed from epoch {resume['epoch']} of {cfg.epochs} ({saved_state.path})",
              file=sys.stderr, flush=True)
        if progress is not None:
            progress({"event": "resumed", "resumed_from_epoch": resume["epoch"]})
    try:
        result = train(cfg, data, callback=progress, on_step=hooks if checkpoints or fault else None,
                       evaluation=evaluation, resume=resume,
                       on_epoch_end=(lambda state: saved_state.save(state, rows)) if saved_state.path else None)
    except DivergedError as exc:
        saved_state.delete()
        out.update(status="diverged", error=str(exc), diverged_step=exc.step, diverged_epoch=exc.epoch,
                   grad_variance=rows)
        return out
    saved_state.delete()
    out.update(status="ok", error=None, metrics=result.metrics, curves=result.curves, grad_variance=rows)
    if kind == "ssvae" and spec.get("samples_per_class"):
        out["samples"] = _save_samples(result.trainer, spec)
    return out


def _save_samples(trainer: Trainer, spec: dict) -> str:
    """Kingma et al.'s analogy figure: one row per class, one z per column: samples/<cell>.analogy.npy (uint8).

    Column j holds the same style z_j ~ N(0, I) under each of the ten labels, so a row shows what
    y controls and a column what z does; z is drawn from a fixed generator, the same for every cell.
    """
    n = spec["samples_per_class"]
    g = torch.Generator().manual_seed(2024)
    digits = torch.arange(10).repeat_interleave(n)
    zs = torch.randn(n, trainer.ss.z_dim, generator=g).repeat(10, 1)  # row i, column j: (y=i, z_j)
    probs = trainer.ss.sample_images(digits, zs=zs).cpu()
    side = int(round(probs.shape[1] ** 0.5))
    img = (probs.reshape(10, n, side, side) * 255).round().to(torch.uint8).numpy()
    rel = f"samples/{spec['id']}{ANALOGY_SUFFIX}"
    spec["_extra_files"] = {rel: img}
    return rel


# -- the task kinds ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskKind:
    """One kind of task: how a worker runs its spec, and what it costs.

    ``run(spec, data_dir, progress, cache_dir) -> dict`` returns the record's fields (``status`` among
    them), may call ``progress({"epoch": e, "step": s, "steps": n})`` and may keep what sibling tasks
    can reuse under ``cache_dir`` (``OUT/cache``; never a result); ``cost(spec)`` is a rough size in
    enum-step equivalents (the progress bar's share of the work), ``probe(spec)`` the part of it spent in
    the gradient probe and ``evaluation(spec)`` the epochs of evaluation it runs (:func:`cost_parts` splits
    the cost by them; the ETA and ``bench list`` calibrate each part on this machine's finished tasks);
    ``epochs(spec)`` is how many epochs the progress lines count. A new kind is a runner, one entry here,
    and its spec expansion in ``bench.run.grid.expand``.
    """
    run: Callable[..., dict]
    cost: Callable[[dict], float]
    epochs: Callable[[dict], int] = lambda spec: 1
    probe: Callable[[dict], float] = lambda spec: 0.0
    evaluation: Callable[[dict], float] = lambda spec: 0.0


KINDS: Dict[str, TaskKind] = {
    "train": TaskKind(run_train, train_cost, config_epochs, own_probe_cost, evaluation_epochs),
    "common": TaskKind(run_common, common_cost, config_epochs, common_cost),
    "timing": TaskKind(run_timing, lambda spec: 60.0),
}


#: the parts of a task's work, each calibrated on its own (:func:`cost_parts`, ``bench.run.harness``)
PARTS = tuple(PART_STEPS)


def cost_parts(spec: dict) -> Dict[str, float]:
    """A task's cost split into its parts: ``train`` (enum-step equivalents of training, or of whatever
    else the kind does), ``eval`` (epochs of evaluation) and ``probe`` (enum-step equivalents of the
    gradient probe). ``cost = train + EVAL_STEPS * eval + probe``."""
    kind = KINDS[spec["kind"]]
    probe, ev = kind.probe(spec), kind.evaluation(spec)
    return {"train": kind.cost(spec) - probe - EVAL_STEPS * ev, "eval": ev, "probe": probe}


def measured_parts(record: dict) -> Dict[str, float]:
    """Seconds a finished task spent in each part: the cell's own ``train_seconds`` and ``eval_seconds``,
    and the rest of its start-to-end time (:func:`bench.core.tables.span`) in its probe, or in its training
    part where it has no probe."""
    start, end = span(record)
    metrics = record.get("metrics") or {}
    train, ev = float(metrics.get("train_seconds") or 0.0), float(metrics.get("eval_seconds") or 0.0)
    rest = max(0.0, end - start - train - ev)
    probed = KINDS[record["spec"]["kind"]].probe(record["spec"]) > 0
    return {"train": train + (0.0 if probed else rest), "eval": ev, "probe": rest if probed else 0.0}


def run_task(spec: dict, out_dir, data_dir=None, progress: Progress = None, threads: Optional[int] = None,
             token: Optional[str] = None, run_id: Optional[str] = None) -> dict:
    """Run one task and write its result file atomically (:func:`bench.core.store.write_record`); returns the record.

    The record carries its identity (``provenance.identity``: commit and dirty flag, every installed
    distribution, the sha256 of the four MNIST files, threads, host, CPU, device) and the executor's
    ``token``, by which the executor tells this attempt's record from an older one. A record that was
    not written (a finished one is kept, or ``OUT/.lock`` no longer names ``run_id``) says why in ``not_written``.
    """
    if threads:
        torch.set_num_threads(threads)
    flushed = flush_denormals()
    out_dir = Path(out_dir)
    started, cpu_start, git = time.time(), cpu_times(), git_commit()  # the code this task runs is loaded now
    record = {"id": spec["id"], "kind": spec["kind"], "spec": spec, "config": spec.get("config")}
    try:
        set_seed(0)
        record.update(KINDS[spec["kind"]].run(spec, data_dir, progress, cache_dir=Folder(out_dir).cache))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded, and the grid goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=8))
    extra = spec.pop("_extra_files", {})
    device = (spec.get("config") or {}).get("device", "cpu")
    try:
        hashes = ssdata.raw_hashes(ssdata.locate_mnist(data_dir, download=False))
    except Exception:  # the data could not be found: the record says so in its error
        hashes = {}
    finished = time.time()  # started/finished (epoch seconds): bench.core.tables.ran_beside finds overlapping tasks
    record.update(seconds=finished - started, started=started, finished=finished,
                  other_cpu_load=other_cpu_load(cpu_start, cpu_times(), finished - started), versions=versions(),
                  threads=torch.get_num_threads(), flush_denormal=flushed, device_name=device_name(device), host=host(),
                  pid=os.getpid(), token=token,
                  identity=identity(device, torch.get_num_threads(), hashes, git=git))
    if run_id is not None and not owns(out_dir, run_id):  # its run was stopped: write nothing at all
        return {**record, "not_written": f"{out_dir / '.lock'} no longer names run {run_id}"}
    for rel, array in extra.items():
        buf = io.BytesIO()
        np.save(buf, array)
        atomic_write_bytes(out_dir / rel, buf.getvalue())
    why = write_record(out_dir, spec, record, run_id)
    return {**record, "not_written": why} if why else record
