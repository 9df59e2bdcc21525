"""Epoch-level resume: a run cut short continues from its last finished epoch, to the last bit.

``ssvae.train.train(on_epoch_end=..., resume=...)`` and the harness's ``OUT/cache/train/<key>.pt``
(``bench.run.tasks.SavedState``): an interrupted run resumed from its state gives the curves, metrics,
parameters and probe rows of the run that was not interrupted (timings aside).
"""
import io
import json

import pyro
import pytest
import torch

from bench.run import tasks
from bench.core.store import _json_default, read_checksummed, write_checksummed
from ssvae import RunConfig
from ssvae.data import split
from ssvae.evaluate import EvalPlan
from ssvae.train import check_resume, preserved_rng, train

from .conftest import synthetic_raw

TINY = dict(labels=100, epochs=3, batch_size=50, hidden=(16,), z_dim=4, steps_per_epoch=5)
EVAL = EvalPlan(elbo_images=50, iwae_k=5, iwae_images=20)
TIMINGS = ("train_seconds", "eval_seconds", "seconds_per_epoch")


class _Cut(Exception):
    """Stands for the end of a session: the process stops after an epoch's state was saved."""


def _data(sha256="synthetic"):
    tx, ty, vx, vy = synthetic_raw()
    return split(tx, ty, vx, vy, labels=100, seed=0, train_size=500, sha256=sha256)


def _through_disk(state: dict) -> dict:
    """The state as a new process reads it: torch.save, then torch.load(weights_only=True)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return torch.load(io.BytesIO(buf.getvalue()), map_location="cpu", weights_only=True)


def _new_process():
    """What a fresh process starts from: an empty param store, other RNG streams."""
    pyro.clear_param_store()
    pyro.set_rng_seed(987)


def _numbers(result):
    """A run's results without its timings: metrics, curves and the trained parameters."""
    metrics = {k: v for k, v in result.metrics.items() if k not in TIMINGS}
    curves = [{k: v for k, v in row.items() if k != "elapsed_seconds"} for row in result.curves]
    params = {k: v.clone() for k, v in result.trainer.ss.state_dict().items()}
    return metrics, curves, params


def _assert_same(a, b):
    assert a[0] == b[0]
    assert a[1] == b[1]
    assert a[2].keys() == b[2].keys() and all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def _interrupted(cfg, data, after: int, **kw) -> dict:
    """Run ``cfg`` until the state of epoch ``after`` is saved, then stop; that state, read back from disk."""
    saved = {}

    def save(state):
        saved[state["epoch"]] = _through_disk(state)
        if state["epoch"] == after:
            raise _Cut

    with pytest.raises(_Cut):
        train(cfg, data, on_epoch_end=save, evaluation=EVAL, **kw)
    assert sorted(saved) == list(range(1, after + 1))
    return saved[after]


# -- ssvae.train ---------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator,aux,options,protocol", [
    ("enum", True, {}, "bench"),
    ("trace", False, {}, "bench"),
    ("nvil", True, {}, "bench"),  # C(x) with its own module name, running c and v in the param store
    ("gumbel", True, {"rate": 0.05, "every": 2}, "bench"),  # the temperature moves within the run
    ("rloo", False, {}, "bench"),
    ("trace-avg", True, {}, "bench"),  # the decaying average in the param store
    ("trace-bx", False, {}, "bench"),
    ("rb-topk", True, {}, "bench"),
    ("unordered-set", False, {}, "bench"),
    ("enum", True, {}, "pyro"),  # the empty auxiliary step's momentum
    ("trace-avg", True, {}, "joint"),
    ("baseline", False, {}, "bench"),
], ids=lambda v: v if isinstance(v, str) else ("aux" if v is True else None))
def test_a_run_resumed_after_epoch_2_is_the_uninterrupted_run(estimator, aux, options, protocol):
    data = _data()
    cfg = RunConfig(estimator=estimator, aux=aux, options=options, protocol=protocol, **TINY).validate()
    whole = _numbers(train(cfg, data, evaluation=EVAL))
    state = _interrupted(cfg, data, after=2)
    _new_process()
    resumed = train(cfg, data, evaluation=EVAL, resume=state)
    _assert_same(_numbers(resumed), whole)
    assert [row["epoch"] for row in resumed.curves] == [1, 2, 3]
    assert resumed.metrics["train_seconds"] >= state["train_seconds"]  # the time of every part


def test_a_run_resumed_after_its_patience_ran_out_trains_no_further():
    """Early stopping is decided before each epoch: a state saved after the epoch that spent the patience (the
    process killed before the result was written) ends there on resume; one saved before it trains to it."""
    data = _data()
    cfg = RunConfig(estimator="trace", aux=True, lr=1e-12, patience=1, **{**TINY, "epochs": 5}).validate()
    whole = _numbers(train(cfg, data, evaluation=EVAL))
    assert [row["epoch"] for row in whole[1]] == [1, 2] and whole[0]["epochs_run"] == 2
    for after in (1, 2):
        state = _interrupted(cfg, data, after=after)
        _new_process()
        _assert_same(_numbers(train(cfg, data, evaluation=EVAL, resume=state)), whole)


def test_probes_after_a_resume_see_what_they_saw_uninterrupted():
    """``on_step`` runs inside ``preserved_rng`` before each step: after a resume it must find the same RNG
    stream, step count, temperature and parameters as in the run that was not cut."""
    data = _data()
    cfg = RunConfig(estimator="gumbel", aux=True, options={"rate": 0.05, "every": 2}, **TINY).validate()

    def probe(seen):
        def on_step(trainer, step):
            with preserved_rng():
                seen.append((step, trainer.main.relax.temperature, torch.rand(3).tolist(),
                             float(trainer.ss.decoder.out.bias.detach().sum())))
        return on_step

    whole, resumed = [], []
    train(cfg, data, evaluation=EVAL, on_step=probe(whole))
    state = _interrupted(cfg, data, after=2)
    _new_process()
    train(cfg, data, evaluation=EVAL, on_step=probe(resumed), resume=state)
    assert resumed == whole[10:]  # steps 10..15: the first after the resume and the final one included


def test_the_state_is_a_copy_and_any_epoch_resumes():
    """The state handed over is not changed by the epochs that follow (it holds copies, not Pyro's or
    Adam's live tensors); resuming from epoch 1, or from the last epoch (only the final bound left), is
    the same run."""
    data = _data()
    cfg = RunConfig(estimator="nvil", aux=True, **TINY).validate()
    states = {}
    result = train(cfg, data, evaluation=EVAL, on_epoch_end=lambda s: states.__setitem__(s["epoch"], s))
    whole = _numbers(result)
    assert sorted(states) == [1, 2, 3]
    saved = states[1]["trainer"]["param_store"]["params"]
    assert not torch.equal(saved["ss_vae$$$decoder.out.bias"], result.trainer.ss.decoder.out.bias.detach())
    assert "nvil_baseline_signal_stats" in saved and "nvil_baseline$$$net.out.weight" in saved
    for epoch in (1, 3):
        _new_process()
        _assert_same(_numbers(train(cfg, data, evaluation=EVAL, resume=states[epoch])), whole)


def test_a_state_of_another_run_is_refused():
    data = _data()
    cfg = RunConfig(estimator="trace-avg", aux=True, **TINY).validate()
    state = _interrupted(cfg, data, after=1)
    check_resume(state, cfg, data, EVAL)  # its own run: fine
    other_cfg = RunConfig(estimator="trace-avg", aux=True, **{**TINY, "epochs": 4}).validate()
    refusals = [(RunConfig(estimator="trace-avg", aux=True, lr=1e-3, **TINY), data, EVAL, "config"),
                (RunConfig(estimator="enum", aux=True, **TINY), data, EVAL, "config"),
                (other_cfg, data, EVAL, "config"),
                (cfg, _data(sha256="other images"), EVAL, "data"),
                (cfg, data, EvalPlan(), "evaluation plan")]
    for other, other_data, plan, what in refusals:
        with pytest.raises(ValueError, match=what):
            train(other, other_data, evaluation=plan, resume=state)
    with pytest.raises(ValueError, match="epoch"):
        check_resume({**state, "epoch": 4}, cfg, data, EVAL)
    with pytest.raises(ValueError, match="version"):
        check_resume({**state, "version": -1}, cfg, data, EVAL)


# -- the harness ---------------------------------------------------------------------------------
def _spec(cell="enum+aux_L100_s0", **config):
    cfg = RunConfig(estimator="enum", aux=True, **{**TINY, **config})
    return {"kind": "train", "id": cell, "config": cfg.to_dict(), "checkpoints": [3, 7, 10, 15], "n_samples": 4,
            "reference_draws": 4, "bootstrap": 20,
            "evaluation": {"elbo_images": 50, "iwae_k": 5, "iwae_images": 20}}


def _record(out: dict) -> str:
    """A record as its file holds it, timings and the resume note left out."""
    out = {k: v for k, v in out.items() if k != "resumed_from_epoch"}
    out["metrics"] = {k: v for k, v in out["metrics"].items() if k not in TIMINGS}
    out["curves"] = [{k: v for k, v in row.items() if k != "elapsed_seconds"} for row in out["curves"]]
    return json.dumps(out, sort_keys=True, default=_json_default)


def _cut_after(epoch: int):
    def progress(ev):
        if ev["event"] == "epoch" and ev["epoch"] == epoch:
            raise _Cut
    return progress


@pytest.fixture
def harness_data(monkeypatch):
    data = _data()
    monkeypatch.setattr(tasks, "_load_data", lambda cfg, data_dir: data)
    return data


def test_a_cell_cut_short_resumes_and_writes_the_uninterrupted_record(harness_data, tmp_path, capsys):
    spec = _spec()
    plain = tasks.run_train(dict(spec), None)  # no cache: the record as it was before resume existed
    cache = tmp_path / "cache"
    whole = tasks.run_train(dict(spec), None, cache_dir=cache)
    assert whole["status"] == "ok" and "resumed_from_epoch" not in whole
    assert _record(whole) == _record(plain)
    assert not list(cache.rglob("*.pt"))  # deleted when the cell ended
    assert {r["step"] for r in whole["grad_variance"]} == {3, 7, 10, 15}

    with pytest.raises(_Cut):
        tasks.run_train(dict(spec), None, progress=_cut_after(2), cache_dir=cache)
    assert len(list((cache / "train").glob("*.pt"))) == 1
    capsys.readouterr()
    events = []
    _new_process()
    resumed = tasks.run_train(dict(spec), None, progress=events.append, cache_dir=cache)
    assert resumed["status"] == "ok" and resumed["resumed_from_epoch"] == 2
    assert capsys.readouterr().err.count("enum+aux_L100_s0: resumed from epoch 2 of 3") == 1
    assert [e for e in events if e["event"] == "resumed"] == [{"event": "resumed", "resumed_from_epoch": 2}]
    assert min(e["epoch"] for e in events if e["event"] == "step") == 3
    assert _record(resumed) == _record(whole)  # probe rows of steps 3 and 7 came from the state
    assert not list(cache.rglob("*.pt"))


def test_a_diverged_cell_deletes_its_state(harness_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SSVAE_BENCH_FAULT", "nan:enum+aux_L100_s0@12")
    cache = tmp_path / "cache"
    out = tasks.run_train(_spec(), None, cache_dir=cache)
    assert out["status"] == "diverged" and out["diverged_epoch"] == 3
    assert not list(cache.rglob("*.pt"))


def test_a_damaged_or_foreign_state_is_deleted_and_the_cell_starts_over(harness_data, tmp_path, capsys):
    spec, cache = _spec(), tmp_path / "cache"
    whole = tasks.run_train(dict(spec), None, cache_dir=cache)

    with pytest.raises(_Cut):  # a state, then one byte of it flipped
        tasks.run_train(dict(spec), None, progress=_cut_after(2), cache_dir=cache)
    (path,) = (cache / "train").glob("*.pt")
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    capsys.readouterr()
    again = tasks.run_train(dict(spec), None, cache_dir=cache)
    assert "resumed" not in capsys.readouterr().err and "resumed_from_epoch" not in again
    assert _record(again) == _record(whole) and not path.exists()

    # a file at this cell's path, checksum right, holding another config's state: deleted on sight
    with pytest.raises(_Cut):
        tasks.run_train(dict(spec), None, progress=_cut_after(1), cache_dir=cache)
    other = RunConfig(estimator="enum", aux=True, lr=1e-3, **TINY)
    foreign = _interrupted(other, harness_data, after=1)
    blob = torch.load(io.BytesIO(read_checksummed(path)), weights_only=True)
    body = io.BytesIO()
    torch.save({**blob, "train": foreign}, body)
    write_checksummed(path, body.getvalue())
    cell = tasks.SavedState(cache, spec, harness_data.sha256)
    assert cell.path == path
    assert cell.load(RunConfig.from_dict(spec["config"]), harness_data, EVAL) is None and not path.exists()

    # another spec (here: another probe setting) is another file: this cell never reads it
    assert tasks.SavedState(cache, {**spec, "n_samples": 5}, harness_data.sha256).path != path


def test_checksummed_files_round_trip_and_a_damaged_one_is_deleted(tmp_path):
    path = tmp_path / "x" / "state.pt"
    write_checksummed(path, b"abc\ndef")
    assert read_checksummed(path) == b"abc\ndef"
    path.write_bytes(path.read_bytes()[:-1] + b"F")
    assert read_checksummed(path) is None and not path.exists()
    assert read_checksummed(path) is None  # missing: None, no error
