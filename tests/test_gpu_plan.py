"""Several cells per GPU: the slots of each GPU (``bench.run.gpu_plan.plan_gpus``), the scheduler that fills
them, the plan `run --dry-run` prints, and the report's CPU and GPU step times side by side.

No GPU is needed: ``torch.cuda`` is monkeypatched (device count, availability, names, memory) and the
workers' processes are fakes that record the ``CUDA_VISIBLE_DEVICES`` each was started with.
"""
import io
import json
import subprocess
import types

import pandas as pd
import pytest
import torch

from bench.run import executors, gpu_plan

from .conftest import needs_mnist
from .report_fixtures import fabricate_results

GIB = 2 ** 30


@pytest.fixture
def gpus(monkeypatch):
    """A machine with CUDA GPUs of the given memory (GiB each); returns the setter."""
    def make(*gib):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gib))
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda i: types.SimpleNamespace(total_memory=gib[i] * GIB, name="NVIDIA H200 (fake)"))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200 (fake)")
    return make


@pytest.fixture
def fake_workers(monkeypatch):
    """Worker processes that start, stay alive for one poll of the executor's loop, then exit without a
    record; returns (CUDA_VISIBLE_DEVICES of each start, {"most": the most alive at once})."""
    seen, live, most = [], [], {"most": 0}

    class FakeProc:
        def __init__(self, cmd, env, **kw):
            seen.append(env.get("CUDA_VISIBLE_DEVICES"))
            live.append(self)
            most["most"] = max(most["most"], len(live))
            self.stdin, self.stdout, self.pid, self.polls = io.StringIO(), io.StringIO(), 1, 0

        def poll(self):
            self.polls += 1
            if self.polls < 2:
                return None
            if self in live:
                live.remove(self)
            return 0

        def send_signal(self, sig):
            pass

        def wait(self, timeout=None):
            return 0

        kill = send_signal

    fake = types.SimpleNamespace(**{k: getattr(subprocess, k) for k in ("PIPE", "DEVNULL", "TimeoutExpired", "run")})
    monkeypatch.setattr(executors, "subprocess", types.SimpleNamespace(**vars(fake), Popen=FakeProc))
    return seen, most


def _timing_record(out, est, reserved_mb):
    """A finished CUDA timing probe of ``est`` with the GPU memory its process held (``cuda_reserved_mb``)."""
    row = {"estimator": est, "aux": True, "device": "cuda", "step_kind": "unsup", "median_ms": 4.0,
           "cuda_peak_mb": reserved_mb * 0.8, "cuda_reserved_mb": reserved_mb}
    record = {"id": f"timing_cuda_{est}", "kind": "timing", "status": "ok", "timing": [row],
              "spec": {"id": f"timing_cuda_{est}", "kind": "timing", "exclusive": True, "estimators": [est]},
              "started": 1000.0, "finished": 1030.0, "device_name": "NVIDIA H200 (fake)", "threads": 16}
    (out / "probes").mkdir(parents=True, exist_ok=True)
    (out / "probes" / f"timing_cuda_{est}.json").write_text(json.dumps(record))


# -- the plan and the scheduler (no MNIST) ---------------------------------------------------------
def test_slots_per_gpu_are_capped_by_workers_and_by_memory(gpus, tmp_path):
    gpus(16, 4)
    plan = gpu_plan.plan_gpus(8, tmp_path)  # ceil(8 / 2) = 4 each; the 4 GiB GPU fits one default cell
    assert plan.slots == {0: 4, 1: 1} and plan.workers == 5 and plan.cell_mb == gpu_plan.DEFAULT_CELL_MB
    assert "5 cells at a time on 2 GPUs (cuda:0: 4 slots, cuda:1: 1 slot, 2048 MB per cell from the default" \
        in plan.line() and "--workers 8 asked, memory allows 5" in plan.line()
    _timing_record(tmp_path, "enum", 300.0)  # measured: 300 x 1.5 + 512 = 962 MB a cell
    _timing_record(tmp_path, "trace", 200.0)
    plan = gpu_plan.plan_gpus(8, tmp_path)
    assert plan.cell_mb == 962 and plan.slots == {0: 4, 1: 3}
    assert "from the timing probe's peak of 300 MB" in plan.line()
    gpus(141)
    assert gpu_plan.plan_gpus(3, tmp_path).slots == {0: 3}


def test_a_new_cell_goes_to_the_gpu_with_the_fewest_running(tmp_path, fake_workers):
    seen, _ = fake_workers
    ex = executors.LocalExecutor(workers=9, gpus=[0, 1], slots={0: 4, 1: 2})
    assert ex.workers == 6
    for i in range(6):
        spec = {"id": f"c{i}", "kind": "train"}
        ex.running[spec["id"]] = ex._start(spec, tmp_path, tmp_path)
    assert seen == ["0", "1", "0", "1", "0", "0"] and ex._free_gpu() is None
    del ex.running["c1"]
    assert ex._free_gpu() == 1
    ex.running.clear()


# -- through `bench run` (reads MNIST's files; trains nothing) -------------------------------------
def _run(*argv):
    from bench.cli import main
    return main(["run", "--preset", "paper", "--device", "cuda", *argv])


@needs_mnist
def test_dry_run_prints_the_gpu_plan_and_its_estimate(gpus, tmp_path, capsys):
    gpus(141)
    out = tmp_path / "x"
    assert _run("--workers", "4", "--dry-run", "--out", str(out)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("to run on 4 worker(s); estimated unknown (no finished tasks to price it on)")
    assert lines[1] == (f"4 cells at a time on 1 GPU (cuda:0: 4 slots, 2048 MB per cell from the default (no CUDA "
                        f"timing record in {out} yet); 63 fit in 90% of cuda:0's 144384 MB)")
    for est in ("trace", "enum", "enum-seq", "rb-topk", "gumbel"):  # the folder's GPU timing prices the grid
        _timing_record(out, est, 300.0)
    assert _run("--workers", "4", "--dry-run", "--out", str(out)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "estimated about" in lines[0] and "NVIDIA H200 (fake)" in lines[0]
    assert "962 MB per cell from the timing probe's peak of 300 MB" in lines[1]


@needs_mnist
def test_run_starts_four_cells_at_a_time_on_the_one_gpu(gpus, tmp_path, fake_workers, monkeypatch):
    gpus(141)
    seen, most = fake_workers
    made = []

    class Recording(executors.LocalExecutor):
        def run(self, specs, out_dir, on_update):  # six of the grid's cells (the timing probes run alone; common probes of one trajectory wait for its first)
            made.append(self)
            super().run([s for s in specs if s["kind"] == "train"][:6], out_dir, on_update)

    monkeypatch.setitem(executors.EXECUTORS, "local", Recording)
    _run("--workers", "4", "--out", str(tmp_path / "x"))
    assert made[0].slots == {0: 4} and made[0].workers == 4
    assert seen == ["0"] * 6 and most["most"] == 4


# -- the report: CPU and GPU side by side ------------------------------------------------------------
def test_timing_table_puts_cpu_and_gpu_side_by_side(tmp_path):
    from bench import report
    from bench.report.context import Context
    from bench.report.data import load_results
    from bench.report.sections import timing

    cpu_dir, gpu_dir = tmp_path / "cpu", tmp_path / "gpu"
    fabricate_results(cpu_dir)
    fabricate_results(gpu_dir, device="cuda", device_name="NVIDIA H200 (fake)")
    cpu = pd.read_csv(cpu_dir / "timing.csv")
    gpu = cpu.assign(device="cuda", device_name="NVIDIA H200 (fake)", median_ms=cpu.median_ms / 4,
                     q1_ms=cpu.q1_ms / 4, q3_ms=cpu.q3_ms / 4)
    gpu.to_csv(gpu_dir / "timing.csv", index=False)
    pd.concat([cpu, gpu]).to_csv(cpu_dir / "timing.csv", index=False)  # one folder's timing.csv: both devices
    section = timing.build(Context(load_results(cpu_dir), plots=False))
    wide = pd.read_csv(cpu_dir / "tables/timing.csv").set_index("estimator")
    assert list(wide.index) == ["trace", "enum", "enum-seq", "baseline"]  # one row per estimator
    assert {"sup ms (cpu)", "sup ms (cuda)", "unsup ms (cpu)", "unsup ms (cuda)", "unsup × trace (cuda)"} <= set(wide)
    assert wide.loc["trace", "cuda speed-up sup / unsup / aux"] == "4.00× / 4.00× / 4.00×"
    assert wide.loc["baseline", "cuda speed-up sup / unsup / aux"] == "4.00× / – / –"
    assert any("side by side" in text for text in section.text)
    # the GPU's folder named by --compare-timing: the same table, in the whole report
    pd.DataFrame(cpu).to_csv(cpu_dir / "timing.csv", index=False)
    report.build_report(cpu_dir, compare_timing=[gpu_dir], plots=False)
    assert pd.read_csv(cpu_dir / "tables/timing.csv").set_index("estimator").equals(wide)
