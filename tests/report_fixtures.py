"""A fabricated results folder in the harness's schema, for the report tests.

``fabricate_results(root)`` writes env.json, runs/*.json, runs.csv, curves.csv, timing.csv,
grad_variance.csv and samples/*.npy for a small grid (trace, enum, enum-seq with and without the
auxiliary loss, the supervised baseline; 2 label counts; 2 seeds), with one failed cell, one
cell missing altogether and, on request, one corrupt (truncated) JSON file.

By default the folder has the newer columns (runs' ``protocol``, ``final_test_elbo``, ``test_iwae``;
curves' ``test_elbo``; timing's ``peak_mb``; grad_variance's error against the exact gradient:
``mse``, ``bias_sq``, ``cosine`` and their intervals); ``modern=False`` writes an older folder without
them. ``relaxation=True`` adds a biased estimator (gumbel) to the gradient probe and the timing probe.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

ESTIMATORS = ("trace", "enum", "enum-seq", "baseline")
LABELS = (100, 3000)
SEEDS = (0, 1)
EPOCHS = 4
STEPS_PER_EPOCH = 25
FAILED_CELL = "enum-seq+aux_L100_s1"
MISSING_CELL = "trace+aux_L3000_s1"
CORRUPT_CELL = "enum-seq_L3000_s0"

# rough accuracy levels, in the spirit of Pyro's Table 1
_ACC = {("trace", False): 0.20, ("trace", True): 0.90, ("enum", False): 0.60, ("enum", True): 0.94,
        ("enum-seq", False): 0.60, ("enum-seq", True): 0.94, ("baseline", False): 0.82}
_MS = {"trace": 6.0, "enum": 14.0, "enum-seq": 55.0, "baseline": 1.5, "gumbel": 5.0}
# the timing probe's reference columns: Pyro / reference per (estimator, step kind), GFLOP per reference step
OVERHEAD = {("trace", "unsup"): 1.3, ("enum", "unsup"): 1.15, ("enum-seq", "unsup"): 1.6, "sup": 1.2, "aux": 1.8}
REF_STEP = {("trace", "unsup"): "unsup-sampled", ("enum", "unsup"): "unsup-enum",
            ("enum-seq", "unsup"): "unsup-enum-seq", ("gumbel", "unsup"): "unsup-sampled"}
GFLOP = {"sup": 0.885, "unsup-sampled": 1.2, "unsup-enum": 9.17, "unsup-enum-seq": 9.17, "aux": 0.32, "baseline": 0.32}
MATMUL_GFLOPS = 1000.0


def cell_id(estimator, aux, labels, seed):
    return f"{estimator}{'+aux' if aux else ''}_L{labels}_s{seed}"


def variants(estimators=ESTIMATORS):
    return [(e, a) for e in estimators for a in ((False,) if e == "baseline" else (False, True))]


def fabricate_results(root, corrupt=False, device="cpu", device_name="Intel Xeon (fake)", seeds=SEEDS, acc=None,
                      overhead=True, modern=True, relaxation=False, noise=0.01, protocol="bench", tuned=None,
                      contended=None, stateful=False):
    """``acc``: {(estimator, aux): level} overriding the accuracy levels; ``overhead`` False: a timing.csv
    without the reference-step columns (a folder written before the probe timed the reference);
    ``noise``: the per-epoch accuracy noise (0: every seed the same curve); ``tuned``: env.json's record of
    a ``--tuned`` choice file; ``stateful``: trace-avg in the gradient probe, its variance half of trace's at
    every common checkpoint but one (seed 0, step 50, 3000 labels: 1.5 times)."""
    levels = {**_ACC, **(acc or {})}
    root = Path(root)
    (root / "runs").mkdir(parents=True, exist_ok=True)
    (root / "samples").mkdir(exist_ok=True)
    rng = np.random.RandomState(0)
    cells = [(e, a, l, s) for l in LABELS for (e, a) in variants() for s in seeds]
    expected = [cell_id(*c) for c in cells]
    env = {"python": "3.11.9", "torch": "2.4.0", "pyro": "1.9.1", "torchvision": "0.19.0",
           "platform": "Linux-6.1-x86_64", "device": device, "device_name": device_name,
           "cpu_name": "Intel Xeon (fake)", "threads": 2, "git_commit": "0123456789abcdef0123",
           "data_sha256": "d" * 64, "preset": "fabricated",
           "command": "python -m bench run --preset fabricated", "date": "2025-01-02T03:04:05Z",
           "grid": {"estimators": list(ESTIMATORS), "aux": [False, True], "labels": list(LABELS),
                    "seeds": list(seeds), "epochs": EPOCHS},
           "expected_cells": expected}
    if tuned:
        env["tuned"] = tuned
    (root / "env.json").write_text(json.dumps(env, indent=2))

    run_rows, curve_rows = [], []
    for (est, aux, labels, seed) in cells:
        cid = cell_id(est, aux, labels, seed)
        if cid == MISSING_CELL:
            continue
        failed = cid == FAILED_CELL
        level = levels[(est, aux)] + (0.03 if labels == 3000 else 0.0)
        curves, elapsed = [], 0.0
        for ep in range(1, EPOCHS + 1):
            elapsed += _MS[est] * STEPS_PER_EPOCH / 1000 * (1 + 0.05 * rng.rand())
            acc = level * (1 - 0.5 ** ep) + noise * rng.randn()
            curves.append({"epoch": ep, "valid_acc": round(acc + 0.005, 4), "test_acc": round(acc, 4),
                           "loss_sup": round(50 / ep, 3), "loss_unsup": round(120 / ep, 3),
                           "loss_aux": round(0.5 / ep, 4) if aux else 0.0,
                           "elapsed_seconds": round(elapsed, 3), "global_step": ep * STEPS_PER_EPOCH})
            if modern:
                curves[-1]["test_elbo"] = None if est == "baseline" else round(-(90 + 200 / ep + 20 * (1 - level)), 3)
        best = max(curves, key=lambda c: c["valid_acc"])
        metrics = None if failed else {
            "test_acc_at_best_valid": best["test_acc"], "best_valid_acc": best["valid_acc"],
            "best_epoch": best["epoch"], "final_test_acc": curves[-1]["test_acc"],
            "final_valid_acc": curves[-1]["valid_acc"], "epochs": EPOCHS,
            "steps": EPOCHS * STEPS_PER_EPOCH, "steps_per_epoch": STEPS_PER_EPOCH,
            "train_seconds": curves[-1]["elapsed_seconds"], "eval_seconds": 0.5,
            "seconds_per_epoch": round(curves[-1]["elapsed_seconds"] / EPOCHS, 4)}
        if metrics and modern:
            elbo = curves[-1]["test_elbo"]
            metrics.update(protocol=protocol, final_test_elbo=elbo, test_iwae=None if elbo is None else elbo + 2.5,
                           iwae_k=None if elbo is None else 100)
        config = {"estimator": est, "aux": aux, "labels": labels, "seed": seed, "epochs": EPOCHS,
                  "batch_size": 200, "lr": 0.00042, "z_dim": 50, "hidden": [500], "aux_multiplier": 46.0,
                  "steps_per_epoch": STEPS_PER_EPOCH, "device": device, "options": {}}
        record = {"cell": cid, "config": config, "status": "failed" if failed else "ok",
                  "error": "RuntimeError: CUDA out of memory (fabricated)" if failed else None,
                  "metrics": metrics, "curves": [] if failed else curves, "data_sha256": env["data_sha256"]}
        text = json.dumps(record, indent=1)
        if corrupt and cid == CORRUPT_CELL:
            text = text[: len(text) // 2]  # truncated mid-write
        (root / "runs" / f"{cid}.json").write_text(text)
        m = metrics or {}
        run_rows.append({"cell": cid, "estimator": est, "aux": aux, "labels": labels, "seed": seed,
                         "device": device, "status": record["status"],
                         "test_acc_at_best_valid": m.get("test_acc_at_best_valid"),
                         "best_valid_acc": m.get("best_valid_acc"), "best_epoch": m.get("best_epoch"),
                         "final_test_acc": m.get("final_test_acc"), "epochs": EPOCHS,
                         "steps": m.get("steps"), "train_seconds": m.get("train_seconds"),
                         "seconds_per_epoch": m.get("seconds_per_epoch"), "data_sha256": env["data_sha256"],
                         **({"protocol": protocol, "final_test_elbo": m.get("final_test_elbo"),
                             "test_iwae": m.get("test_iwae")} if modern else {}),
                         "error": record["error"]})
        for c in record["curves"]:
            curve_rows.append({"cell": cid, "estimator": est, "aux": aux, "labels": labels, "seed": seed,
                               "device": device, **c})
        if not failed and est != "baseline":
            probs = rng.rand(10, 6, 28, 28) ** 3
            for d in range(10):  # a bright bar whose position encodes the digit
                probs[d, :, 4 + 2 * d: 6 + 2 * d, 4:24] = 1.0
            np.save(root / "samples" / f"{cid}.analogy.npy", (probs * 255).astype(np.uint8))

    _write_csv(root / "runs.csv", run_rows)
    _write_csv(root / "curves.csv", curve_rows)

    timing = []
    for (est, aux) in variants(ESTIMATORS + (("gumbel",) if relaxation else ())):
        kinds = ("sup",) if est == "baseline" else ("sup", "unsup") + (("aux",) if aux else ())
        for kind in kinds:
            base = {"sup": _MS[est] / 2 if est != "baseline" else _MS[est], "unsup": _MS[est], "aux": 1.2}[kind]
            row = {"estimator": est, "aux": aux, "device": device, "device_name": device_name,
                   "step_kind": kind, "batch_size": 200, "n_steps": 50, "median_ms": base,
                   "q1_ms": round(base * 0.95, 3), "q3_ms": round(base * 1.07, 3)}
            if overhead:
                ref = "baseline" if est == "baseline" else REF_STEP.get((est, kind), kind)
                ratio = OVERHEAD.get((est, kind), OVERHEAD.get(kind, 1.2))
                ref_ms = base / ratio
                row.update(ref_step=ref, ref_median_ms=ref_ms, ref_q1_ms=ref_ms * 0.97, ref_q3_ms=ref_ms * 1.04,
                           pyro_overhead=ratio, gflop=GFLOP[ref], matmul_gflops=MATMUL_GFLOPS,
                           pct_of_matmul_peak=100 * GFLOP[ref] / (ref_ms / 1e3) / MATMUL_GFLOPS)
            if modern:
                row.update(peak_mb=round(base * 3.0, 3), peak_mb_method="RSS sampling after malloc_trim",
                           other_cpu_load=(contended or {}).get(est, 0.0))
            timing.append(row)
    _write_csv(root / "timing.csv", timing)

    grad = []
    var0 = {"trace": 40.0, "enum": 1.0, "enum-seq": 1.0, "gumbel": 0.5}
    bias0 = {"gumbel": 3.0}  # squared bias per coordinate: the relaxation's, the others' are zero
    for labels in LABELS:
        for seed in seeds:
            for est in ("trace", "enum", "enum-seq") + (("gumbel",) if relaxation else ()) \
                    + (("trace-avg",) if stateful else ()):
                for traj in ("own", "common"):
                    for step in (0, 50, 100):
                        for group in ("encoder_y", "encoder_z", "decoder"):
                            for kind in ("unsup", "sup"):
                                v = var0.get(est, 40.0) * (1.0 if kind == "unsup" else 0.1) / (1 + step / 50) \
                                    * (1 + 0.1 * rng.rand())
                                if est == "trace-avg":  # half of trace's row just written (same key)
                                    worse = (labels, seed, step) == (3000, 0, 50)
                                    v = next(r["variance"] for r in grad[::-1] if r["estimator"] == "trace" and
                                             (r["labels"], r["seed"], r["trajectory"], r["step"], r["param_group"],
                                              r["step_kind"]) == (labels, seed, traj, step, group, kind)) \
                                        * (1.5 if worse else 0.5)
                                msq = 0.05 / (1 + step / 100)
                                row = {"estimator": est, "aux": False, "labels": labels, "seed": seed,
                                       "trajectory": traj, "step": step, "param_group": group,
                                       "step_kind": kind, "n_samples": 32, "variance": v,
                                       "mean_sq": msq, "snr": msq / v}
                                if modern:
                                    b = bias0.get(est, 0.0) / (1 + step / 50)
                                    row.update(signal=msq - v / 32, bias_sq=b, mse=v + b, cosine=0.99 - 0.1 * (b > 0),
                                               variance_lo=0.8 * v, variance_hi=1.2 * v, bias_sq_lo=b - 0.01,
                                               bias_sq_hi=b + 0.01, mse_lo=0.8 * v + b, mse_hi=1.2 * v + b,
                                               cosine_lo=0.95 - 0.1 * (b > 0), cosine_hi=1.0, ref_sq=0.05,
                                               ref_err=1e-4, ref_draws=200)
                                grad.append(row)
    _write_csv(root / "grad_variance.csv", grad)
    return env


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def summary_bullets(folder) -> list:
    """The bullet lines of ``tables/summary.md`` (after the decision table, which opens the file)."""
    from pathlib import Path
    text = (Path(folder) / "tables/summary.md").read_text()
    if "| variant |" in text:
        assert text.startswith("**Which estimator?**"), "the decision table opens summary.md"
    return [l for l in text.splitlines() if l.startswith("- ")]
