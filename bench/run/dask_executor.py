"""The dask executor (``--executor dask``): the tasks of a grid on a dask.distributed cluster.

``--scheduler tcp://HOST:PORT`` reaches a running scheduler, else a LocalCluster is started; each task runs
``python -m bench.run.worker`` in a fresh process on a dask worker and writes its own result file (the output
folder must be on a file system every worker sees). A scheduler that goes away mid-grid stops the grid in
one line (:class:`SchedulerLost`); finished records are kept. Registered in ``bench.run.executors.EXECUTORS``.
"""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import List, Optional

from ..core.errors import EXIT_STORAGE, ConfigError, StorageError
from ..core.schema import Folder
from ..core.store import open_log, read_result, result_path
from .launch import (OnUpdate, TaskState, _last_line, default_threads, die_with_parent, failed_record, new_token,
                     task_threads, worker_command, write_failed)


def _run_in_subprocess(spec: dict, out_dir: str, data_dir: Optional[str], threads: int, token: str,
                       run_id: Optional[str] = None) -> dict:
    """A dask task: run the spec in a fresh process (Pyro's param store is global) and return its record.

    Raises if the process died without writing this attempt's record (its token), so that dask retries
    it; an older record of the same task is never taken for this one.
    """
    cmd = worker_command(out_dir, threads, data_dir, token, run_id)
    log_dir = Folder(Path(out_dir)).logs
    with open_log(log_dir / f"{spec['id']}.log") as log:
        proc = subprocess.run(cmd, input=json.dumps(spec), stdout=subprocess.DEVNULL, stderr=log, text=True,
                              preexec_fn=die_with_parent)
    record, _ = read_result(result_path(out_dir, spec))
    if record is None or record.get("token") != token:
        code = proc.returncode
        if code == EXIT_STORAGE:
            raise StorageError(_last_line(log_dir / f"{spec['id']}.log"))
        if code == 0:  # it ran to its end, and its record was not written by rule (bench.core.store.write_record)
            return {**failed_record(spec, _last_line(log_dir / f"{spec['id']}.log")), "token": token}
        raise RuntimeError(f"worker killed by signal {-code}" if code < 0 else f"worker exited with status {code}")
    return {k: record.get(k) for k in ("id", "status", "error", "token")}


#: the driver's loggers of dask and its event loop: their reconnect tracebacks would bury the one line
QUIET_LOGGERS = ("distributed", "tornado")


class SchedulerLost(StorageError):
    """The dask scheduler went away mid-grid: the grid stops; finished records are kept."""


class DaskExecutor:
    """Tasks on a dask.distributed cluster: ``scheduler`` (tcp://host:port) or a LocalCluster.

    Each task runs ``python -m bench.run.worker`` in a fresh process on a dask worker and writes its
    own result file, so the output folder must be on a file system every worker sees. A task
    whose process dies is retried ``retries`` times by dask, then recorded as failed.
    """

    name = "dask"
    connect_timeout_s = 10
    FLAGS = ("scheduler",)
    PINS_GPUS = False

    @staticmethod
    def add_arguments(p) -> None:
        p.add_argument("--scheduler", default=None,
                       help="dask: the scheduler's address tcp://HOST:PORT (default: start a LocalCluster)")

    @staticmethod
    def options(args) -> dict:
        return {"scheduler": args.scheduler}

    def __init__(self, workers: int = 1, threads: Optional[int] = None, data_dir: Optional[str] = None,
                 retries: int = 1, scheduler: Optional[str] = None, run_id: Optional[str] = None):
        self.run_id = run_id
        self.futures: list = []
        self.workers = max(1, workers)
        self.threads = threads or default_threads(self.workers)
        self.data_dir = data_dir
        self.retries = retries
        self.scheduler = scheduler
        self.client = self.cluster = None

    def connect(self) -> None:
        """Start or reach the cluster; raises ConfigError if the scheduler does not answer."""
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("--executor dask needs the 'distributed' package: pip install -e '.[dask]'") from None
        # a lost scheduler is said in one line (SchedulerLost), not in tracebacks; the children too, since dask
        # gives some (distributed.client, tornado.application) their own level and stderr handler
        children = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in QUIET_LOGGERS]
        for name in (*QUIET_LOGGERS, *children):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout=f"{self.connect_timeout_s}s")
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"dask scheduler {self.scheduler} did not answer within {self.connect_timeout_s} s "
                                  f"({type(exc).__name__}): start it or check --scheduler") from None
        else:
            self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=40)
            self.client = Client(self.cluster)

    def run(self, specs: List[dict], out_dir, on_update: OnUpdate) -> None:
        from distributed import as_completed

        if self.client is None:
            self.connect()
        out_dir = str(Path(out_dir).resolve())
        try:
            exclusive = [s for s in specs if s.get("exclusive")]
            rest = [s for s in specs if not s.get("exclusive")]
            for batch in ([[s] for s in exclusive] + [rest]):
                if not batch:
                    continue
                futures, tokens = {}, {}
                for spec in batch:
                    token = new_token()  # one per submission; dask's retries share it, and each writes it
                    fut = self.client.submit(_run_in_subprocess, spec, out_dir, self.data_dir,
                                             task_threads(spec, self.threads), token, self.run_id,
                                             key=f"ssvae-{spec['id']}-{token}", retries=self.retries, pure=False)
                    futures[fut], tokens[spec["id"]] = spec, token
                self.futures = list(futures)
                pending = {spec["id"]: TaskState(spec) for spec in batch}  # submitted: no progress lines from dask
                for fut in as_completed(list(futures)):
                    spec = futures[fut]
                    pending.pop(spec["id"], None)
                    try:
                        record = fut.result()
                    except StorageError:
                        raise
                    except Exception as exc:
                        mine, _ = read_result(result_path(out_dir, spec))
                        if mine is not None and mine.get("token") == tokens[spec["id"]]:
                            record = mine  # it finished; only the answer was lost
                        elif self._scheduler_gone(exc):
                            raise SchedulerLost(f"the dask scheduler went away ({type(exc).__name__}): finished "
                                                f"records are kept; rerun the same command to resume") from None
                        else:  # retries exhausted
                            record = write_failed(out_dir, spec, f"{exc} (after {self.retries + 1} attempts; "
                                                                 f"see logs/{spec['id']}.log)")
                    on_update(pending, record)
        finally:
            self.shutdown()

    def _scheduler_gone(self, exc: Exception) -> bool:
        """True when the exception says the scheduler (not the task) failed."""
        import asyncio
        import concurrent.futures

        from distributed.comm.core import CommClosedError

        gone = (CommClosedError, OSError, asyncio.CancelledError, concurrent.futures.CancelledError)
        if isinstance(exc, gone) and not isinstance(exc, StorageError):
            return True
        try:
            return self.client is None or self.client.status not in ("running", "connecting", "newly-created")
        except Exception:
            return True

    def shutdown(self) -> None:
        """Cancel the futures still pending (their workers, once the lock no longer names this run, write
        nothing), then close the client and the cluster this executor started."""
        if self.client is not None:
            try:
                self.client.cancel(self.futures, force=True)
            except Exception:  # a scheduler that went away has nothing left to cancel
                pass
            self.futures = []
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None
