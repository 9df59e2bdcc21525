"""One task in its own process: ``python -m bench.run.worker --out DIR [--token T] [--run R] < spec.json``.

Progress goes to stdout as JSON lines (read by the local executor); logs to stderr. A result that
cannot be written (full disk, read-only folder) exits with status ``EXIT_STORAGE`` and one line on
stderr, so the driver stops the grid instead of retrying. A result that is not written by rule
(``bench.core.store.write_record``: a finished record is kept, or ``OUT/.lock`` no longer names run ``R``)
exits 0 with its status and the reason as the last line on stderr: the executor does not retry it.
"""
import argparse
import json
import os
import sys
import time

from ..core.errors import EXIT_STORAGE, StorageError
from .tasks import run_task

#: Test-only: ``SSVAE_BENCH_HANG=CELL`` makes that task's worker hang before it starts (no progress,
#: never ends), as a deadlocked cell would; the driver's stall watchdog must record it and go on.
HANG_ENV = "SSVAE_BENCH_HANG"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--token", default=None)
    p.add_argument("--run", default=None, help="the run id OUT/.lock must name for the result to be written")
    args = p.parse_args()
    spec = json.loads(sys.stdin.read())
    if spec["id"] in os.environ.get(HANG_ENV, "").split(","):
        while True:
            time.sleep(60)
    last = [0.0]

    def progress(ev):
        now = time.time()
        if ev["event"] == "epoch" or now - last[0] > 0.5:
            last[0] = now
            print(json.dumps(ev), flush=True)

    try:
        record = run_task(spec, args.out, data_dir=args.data_dir, progress=progress, threads=args.threads,
                          token=args.token, run_id=args.run)
    except StorageError as exc:
        print(f"bench.run.worker: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    if record.get("not_written"):
        print(f"bench.run.worker: {record['status']}" + (f" ({record['error']})" if record.get("error") else "")
              + f", not written: {record['not_written']}", file=sys.stderr)
    print(json.dumps({"event": "done", "status": record["status"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
