"""One task in its own process: ``python -m bench.worker --out DIR < spec.json``.

Progress goes to stdout as JSON lines (read by the local executor); logs to stderr.
"""
import argparse
import json
import sys
import time

from .tasks import run_task


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    spec = json.loads(sys.stdin.read())
    last = [0.0]

    def progress(ev):
        now = time.time()
        if ev["event"] == "epoch" or now - last[0] > 0.5:
            last[0] = now
            print(json.dumps(ev), flush=True)

    record = run_task(spec, args.out, data_dir=args.data_dir, progress=progress, threads=args.threads)
    print(json.dumps({"event": "done", "status": record["status"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
