"""The dask executor: the smoke grid through a real ``distributed.LocalCluster`` (2 workers) gives
the same cells as the local executor, to the digit (same seeds, same thread count, CPU)."""
import csv

import pytest

from .conftest import bench, needs_mnist

pytest.importorskip("distributed")

#: the smoke preset restricted to the tutorial's estimators, to keep CI short; every cell the
#: dask run makes is compared with the same cell of the local smoke run
SUBSET = ["--estimators", "enum", "--labels", "100"]
SAME = ("status", "test_acc_at_best_valid", "best_valid_acc", "best_epoch", "final_test_acc", "final_valid_acc",
        "epochs", "steps", "data_sha256")


def _rows(path):
    with open(path) as fh:
        return {r["cell"]: r for r in csv.DictReader(fh)}


@needs_mnist
def test_dask_local_cluster_matches_local_executor(smoke_run, tmp_path):
    local_out = smoke_run[0]
    out = tmp_path / "dask"
    r = bench("run", "--preset", "smoke", *SUBSET, "--executor", "dask", "--workers", "2", "--out", str(out),
              timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    dask_rows, local_rows = _rows(out / "runs.csv"), _rows(local_out / "runs.csv")
    assert len(dask_rows) == 3  # enum with and without aux at 100 labels, and the baseline
    for cell, row in dask_rows.items():
        assert {k: row[k] for k in SAME} == {k: local_rows[cell][k] for k in SAME}, cell
    # the grid's variance probe on the shared trajectory, too
    with open(out / "grad_variance.csv") as fh:
        dask_var = {(r["estimator"], r["labels"], r["step"], r["param_group"], r["step_kind"]): r["variance"]
                    for r in csv.DictReader(fh) if r["trajectory"] == "common"}
    with open(local_out / "grad_variance.csv") as fh:
        local_var = {(r["estimator"], r["labels"], r["step"], r["param_group"], r["step_kind"]): r["variance"]
                     for r in csv.DictReader(fh) if r["trajectory"] == "common"}
    assert dask_var and all(local_var[k] == v for k, v in dask_var.items())
    # a rerun through dask finds everything done
    r = bench("run", "--preset", "smoke", *SUBSET, "--executor", "dask", "--workers", "2", "--out", str(out),
              timeout=300)
    assert r.returncode == 0 and "0 to run" in r.stderr, r.stderr
