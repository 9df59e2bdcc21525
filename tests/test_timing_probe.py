"""The harness's timing probe (bench.run.timing_probe.run_timing) on a tiny net: Pyro's step beside the reference's."""
import csv
import math

import pytest

from bench.run import tasks
from bench.core.schema import TIMING_COLUMNS
from bench.core.tables import write_tables
from ssvae import reference as ref
from ssvae.config import RunConfig

from .conftest import mnist_dir, needs_mnist

NEW = ("ref_median_ms", "pyro_overhead", "gflop", "matmul_gflops", "pct_of_matmul_peak")


def test_pairing_is_the_benchmarks_pairing():
    assert ref.pairing("enum", "unsup") == ("unsup-enum", True)
    assert ref.pairing("trace", "unsup") == ("unsup-sampled", True)
    assert ref.pairing("trace", "aux") == ("aux", True)
    assert ref.pairing("gumbel", "sup") == ("sup", True)
    assert ref.pairing("gumbel", "unsup") == (ref.YARDSTICK, False)


@needs_mnist
def test_run_timing_times_the_reference_step(tmp_path):
    cfg = RunConfig(estimator="enum", aux=True, labels=100, hidden=(64,), z_dim=8)
    spec = {"kind": "timing", "id": "timing_cpu", "estimators": ["trace", "enum"], "aux": [False, True],
            "device": "cpu", "config": cfg.to_dict(), "warmup": 1, "steps": 3}
    record = tasks.run_task(spec, tmp_path, data_dir=mnist_dir())
    assert record["status"] == "ok", record.get("traceback")
    assert record["matmul"]["gflops_median"] > 0
    rows = record["timing"]
    assert {(r["estimator"], r["aux"], r["step_kind"]) for r in rows} == {
        ("trace", False, "sup"), ("trace", False, "unsup"), ("trace", True, "sup"), ("trace", True, "unsup"),
        ("trace", True, "aux"), ("enum", False, "sup"), ("enum", False, "unsup"), ("enum", True, "sup"),
        ("enum", True, "unsup"), ("enum", True, "aux")}
    for r in rows:  # trace and enum have a hand-written twin for every step kind
        for col in NEW:
            assert isinstance(r[col], float) and math.isfinite(r[col]) and r[col] > 0, (r, col)
        assert r["pyro_overhead"] == pytest.approx(r["median_ms"] / r["ref_median_ms"])
        assert r["ref_step"] == ref.pairing(r["estimator"], r["step_kind"])[0]
    enum_unsup = next(r for r in rows if (r["estimator"], r["aux"], r["step_kind"]) == ("enum", False, "unsup"))
    trace_unsup = next(r for r in rows if (r["estimator"], r["aux"], r["step_kind"]) == ("trace", False, "unsup"))
    assert enum_unsup["gflop"] > 5 * trace_unsup["gflop"]  # ten labels' passes of encoder_z and decoder

    write_tables(tmp_path, [spec])
    with open(tmp_path / "timing.csv") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == TIMING_COLUMNS and len(table) == len(rows)
    for r in table:
        for col in NEW:
            assert float(r[col]) > 0
