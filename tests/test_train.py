"""Training: paired seeds, Pyro's protocol (the momentum step of the empty auxiliary loss), the per-epoch test ELBO."""
import math
from dataclasses import replace

import pyro
import pytest
import torch

from ssvae import RunConfig, evaluate
from ssvae.data import split
from ssvae.errors import ConfigError
from ssvae.train import Trainer, train

from .conftest import synthetic_raw

TINY = dict(z_dim=3, hidden=(8,), labels=100, batch_size=50)


def _data(seed=0):
    tx, ty, vx, vy = synthetic_raw()
    return split(tx, ty, vx, vy, labels=100, seed=seed, train_size=500, sha256="synthetic")


def _state(trainer):
    return {k: v.clone() for k, v in trainer.ss.state_dict().items()}


# -- paired seeds ------------------------------------------------------------------------------------
def test_same_seed_pairs_subset_weights_and_batch_order_across_estimators():
    """What makes seeds paired: the labeled subset, the initial weights and the batch order depend on the
    seed alone, not on the estimator, the auxiliary loss or the protocol."""
    data = _data(0)
    assert torch.equal(data.sup_index, _data(0).sup_index)
    assert not torch.equal(data.sup_index, _data(1).sup_index)
    runs = {}
    for est, aux, protocol in [("enum", True, "bench"), ("trace", False, "bench"), ("rb-topk", True, "bench"),
                               ("gumbel", True, "pyro"), ("trace-bx", False, "bench"), ("baseline", False, "bench")]:
        t = Trainer(RunConfig(estimator=est, aux=aux, seed=3, protocol=protocol, **TINY).validate(), data)
        kinds = t.schedule()
        runs[est] = (_state(t), kinds, [xs.clone() for _, xs, _ in t.batches(kinds)])
    ref_state, ref_kinds, ref_batches = runs["enum"]
    for est, (state, kinds, batches) in runs.items():
        assert state.keys() == ref_state.keys()
        assert all(torch.equal(state[k], ref_state[k]) for k in state), est
        if est != "baseline":  # the baseline's epoch is labeled batches only
            assert kinds == ref_kinds
            assert all(torch.equal(a, b) for a, b in zip(batches, ref_batches)), est
    other = Trainer(RunConfig(estimator="enum", aux=True, seed=4, **TINY), data)
    assert not torch.equal(_state(other)["decoder.out.weight"], ref_state["decoder.out.weight"])
    o_batches = [xs for _, xs, _ in other.batches(other.schedule())]
    assert not all(torch.equal(a, b) for a, b in zip(o_batches, ref_batches))


# -- Pyro's protocol ---------------------------------------------------------------------------------
def _sequence(data):
    xs_s, ys_s = data.sup.x[:50], data.sup.y[:50]
    return [("unsup", data.unsup.x[:50], None), ("sup", xs_s, ys_s), ("unsup", data.unsup.x[50:100], None),
            ("unsup", data.unsup.x[100:150], None), ("sup", data.sup.x[50:], data.sup.y[50:])]


def _run_trainer(cfg, data):
    t = Trainer(cfg, data)
    for kind, xs, ys in _sequence(data):
        t.step(kind, xs, ys)
    return _state(t)


def _run_by_hand(cfg, data):
    """Pyro's loop written with plain torch: every loss on every batch, one Adam, gradients zeroed (not
    dropped) after each step. The auxiliary loss on an unlabeled batch has nothing to differentiate, so its
    step is Adam's update with the zero gradients the previous step left."""
    t = Trainer(cfg, data)  # the same initial weights and RNG state as the trainer's run
    params = list(t.ss.parameters())
    adam = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, 0.999))
    for kind, xs, ys in _sequence(data):
        args = (xs, ys) if ys is not None else (xs,)
        for objective in (t.main, t.aux):
            if ys is not None or objective is t.main:
                objective.loss_and_grads(*args)
            adam.step()  # parameters whose .grad is None (never reached) are skipped, as in torch
            for p in params:
                if p.grad is not None:
                    p.grad.zero_()
    return _state(t)


def test_pyro_protocol_takes_adams_momentum_step_on_the_empty_aux_loss():
    data = _data(0)
    cfg = RunConfig(estimator="enum", aux=True, seed=2, protocol="pyro", **TINY).validate()
    pyro_run = _run_trainer(cfg, data)
    bench_run = _run_trainer(replace(cfg, protocol="bench"), data)
    hand = _run_by_hand(cfg, data)
    for k in hand:
        assert torch.allclose(pyro_run[k], hand[k], rtol=1e-5, atol=1e-8), k
    # the empty step moved every network (by momentum): the bench loop, which skips it, ends elsewhere
    for net in ("encoder_y", "encoder_z", "decoder"):
        moved = max((pyro_run[k] - bench_run[k]).abs().max().item() for k in hand if k.startswith(net))
        assert moved > 1e-4, net


def test_pyro_protocol_losses_and_bench_protocol_without_aux_are_the_same_loop():
    data = _data(0)
    cfg = RunConfig(estimator="trace", aux=False, seed=2, protocol="pyro", **TINY)
    a = _run_trainer(cfg, data)
    b = _run_trainer(replace(cfg, protocol="bench"), data)
    assert all(torch.equal(a[k], b[k]) for k in a)
    t = Trainer(replace(cfg, aux=True), data)
    out = t.step("unsup", data.unsup.x[:50], None)
    assert set(out) == {"unsup", "aux"} and out["aux"] == 0.0


def test_pyro_protocol_refuses_a_batch_size_that_does_not_divide_the_labels():
    RunConfig(labels=100, batch_size=200).validate()  # bench: one partial labeled batch
    RunConfig(labels=100, batch_size=100, protocol="pyro").validate()
    with pytest.raises(ConfigError) as err:
        RunConfig(labels=100, batch_size=200, protocol="pyro").validate()
    msg = str(err.value)
    assert "\n" not in msg and "200" in msg and "100 labels" in msg and "try 100" in msg
    with pytest.raises(ConfigError, match="50000 training"):
        RunConfig(labels=300, batch_size=300, protocol="pyro").validate()
    with pytest.raises(ConfigError, match="unknown protocol 'tf'"):
        RunConfig(protocol="tf").validate()


# -- the common objective, every epoch ---------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["enum", "gumbel", "rb-topk", "baseline"])
def test_every_epoch_reports_the_discrete_test_elbo(estimator):
    data = _data(0)
    cfg = RunConfig(estimator=estimator, aux=True, epochs=2, steps_per_epoch=3, seed=1, **TINY)
    result = train(cfg, data)
    elbos = [row["test_elbo"] for row in result.curves]
    m = result.metrics
    if estimator == "baseline":  # no generative model is trained
        assert elbos == [None, None] and m["test_iwae"] is None and m["final_test_elbo"] is None
        return
    assert len(elbos) == 2 and all(math.isfinite(e) and e < 0 for e in elbos)
    assert elbos[0] != elbos[1]  # the networks moved between the epochs; the evaluation noise did not
    assert m["final_test_elbo"] == elbos[-1]
    assert math.isfinite(m["test_iwae"]) and m["iwae_k"] == 100 and m["iwae_images"] == len(data.test)
    assert m["protocol"] == "bench" and m["elbo_images"] == len(data.test) and m["eval_seconds"] > 0


def test_an_evaluation_plan_covers_fewer_images():
    data = _data(0)
    cfg = RunConfig(estimator="enum", epochs=1, steps_per_epoch=2, seed=1, **TINY)
    plan = evaluate.EvalPlan(elbo_images=30, iwae_k=7, iwae_images=1000)
    m = train(cfg, data, evaluation=plan).metrics
    assert (m["elbo_images"], m["iwae_k"], m["iwae_images"]) == (30, 7, len(data.test))
    off = train(cfg, data, evaluation=evaluate.EvalPlan(elbo_images=0, iwae_images=0))
    assert off.curves[0]["test_elbo"] is None and off.metrics["test_iwae"] is None
    assert (off.metrics["elbo_images"], off.metrics["iwae_images"]) == (0, 0)
    with pytest.raises(ConfigError, match="iwae_k"):
        evaluate.EvalPlan(iwae_k=0)
    with pytest.raises(ConfigError, match="elbo_images"):
        evaluate.EvalPlan(elbo_images=2.5)
    with pytest.raises(ConfigError, match="iwae_images"):
        evaluate.EvalPlan(iwae_images=-1)


def test_evaluation_does_not_change_the_run():
    """The ELBO draws its noise from its own generator: a run's trajectory is the same with or without it."""
    data = _data(0)
    cfg = RunConfig(estimator="trace", aux=False, epochs=2, steps_per_epoch=4, seed=1, **TINY)
    a = train(cfg, data)
    state_a = _state(a.trainer)
    pyro.clear_param_store()
    t = Trainer(cfg, data)
    kinds = t.schedule()
    for _ in range(2):
        for kind, xs, ys in t.batches(kinds):
            t.step(kind, xs, ys)
            t.global_step += 1
    b = _state(t)
    assert all(torch.equal(state_a[k], b[k]) for k in b)
