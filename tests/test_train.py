"""Training: paired seeds, Pyro's protocol (the momentum step of the empty auxiliary loss), the per-epoch test ELBO."""
import math
from dataclasses import replace

import pyro
import pytest
import torch

from bench.analysis.patience import end_and_best
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


# -- the joint protocol: a labeled batch in every step ------------------------------------------------
def test_joint_protocol_takes_a_labeled_batch_in_every_step_cycling_the_labeled_set():
    data = _data(0)
    cfg = RunConfig(estimator="enum", aux=True, seed=2, protocol="joint", sup_batch_size=30, **TINY).validate()
    t = Trainer(cfg, data)
    kinds = t.schedule()
    assert kinds == ["joint"] * math.ceil(len(data.unsup) / 50)
    seen = []
    for kind, xu, (xl, yl) in t.batches(kinds):
        assert xu.shape[0] <= 50 and xl.shape[0] <= 30 and yl.shape == (xl.shape[0], 10)
        seen.append(xl)
    # every labeled image is used once per pass over the labeled set (100 images: passes of 30, 30, 30, 10)
    first_pass = torch.cat(seen[:4])
    assert first_pass.shape[0] == 100
    assert torch.equal(first_pass.sum(0), data.sup.x.sum(0)) or \
        torch.allclose(first_pass.sum(0), data.sup.x.sum(0), atol=1e-4)
    base = Trainer(replace(cfg, estimator="baseline", aux=False), data)
    assert base.schedule() == ["sup"] * len(kinds)
    assert all(xs.shape[0] <= 30 for _, xs, _ in base.batches(base.schedule()))


@pytest.mark.parametrize("aux", [False, True])
def test_joint_step_is_one_adam_step_on_the_weighted_sum_written_by_hand(aux):
    """The joint step against the loss written out: -ELBO(x_u) + w (-ELBO(x_l, y_l) + a CE), one Adam step."""
    data = _data(0)
    cfg = RunConfig(estimator="enum", aux=aux, seed=2, protocol="joint", sup_weight=0.3, weight_decay=0.01,
                    **TINY).validate()
    xu, xl, yl = data.unsup.x[:50], data.sup.x[:20], data.sup.y[:20]
    t = Trainer(cfg, data)
    stepped = {}
    real_optim = t.optim

    def capture(params):  # the gradient Adam is handed, then the real step
        stepped.update({id(p): p.grad.clone() for p in params if p.grad is not None})
        real_optim(params)

    t.optim = capture
    pyro.set_rng_seed(7)
    out = t.joint_step(xu, xl, yl)
    trained = _state(t)

    h = Trainer(cfg, data)  # the same initial weights
    params = list(h.ss.parameters())
    adam = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, 0.999), weight_decay=0.01)
    pyro.set_rng_seed(7)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    loss_u = elbo.differentiable_loss(h.main.model, h.main.guide, xu)
    loss_l = elbo.differentiable_loss(h.main.model, h.main.guide, xl, yl)
    total = loss_u + 0.3 * loss_l
    ce = torch.nn.functional.cross_entropy(h.ss.encoder_y(xl), yl.argmax(-1), reduction="sum")
    if aux:
        total = total + 0.3 * cfg.aux_multiplier * ce
    total.backward()
    for p_t, p_h in zip(t.ss.parameters(), params):
        assert torch.allclose(stepped[id(p_t)], p_h.grad, rtol=1e-4, atol=1e-6)
    adam.step()
    for k, v in _state(h).items():
        assert torch.allclose(trained[k], v, rtol=1e-4, atol=1e-7), k
    assert out["unsup"] == pytest.approx(loss_u.item(), rel=1e-5)
    assert out["sup"] == pytest.approx(loss_l.item(), rel=1e-5)
    if aux:
        assert out["aux"] == pytest.approx(cfg.aux_multiplier * ce.item(), rel=1e-4)


def test_joint_run_trains_and_reports_its_protocol():
    data = _data(0)
    r = train(RunConfig(estimator="enum", aux=True, seed=1, epochs=2, protocol="joint", **TINY), data)
    assert r.metrics["protocol"] == "joint" and r.metrics["steps"] == 2 * math.ceil(len(data.unsup) / 50)
    assert all(math.isfinite(row["loss_sup"]) and row["loss_sup"] > 0 for row in r.curves)


def test_new_run_fields_leave_earlier_identities_alone_and_are_checked():
    """Fields added later (sup_batch_size, sup_weight, weight_decay) are written only where they are not their
    default: an earlier config's dict, and so its key and every committed record's identity, is unchanged."""
    old = RunConfig(estimator="enum", aux=True, labels=100, seed=0, epochs=20)
    assert not {"sup_batch_size", "sup_weight", "weight_decay", "patience"} & set(old.to_dict())
    assert RunConfig.from_dict(old.to_dict()) == old
    joint = RunConfig(protocol="joint", sup_weight=0.5, weight_decay=1e-5)
    assert joint.to_dict()["sup_weight"] == 0.5 and RunConfig.from_dict(joint.to_dict()) == joint
    assert joint.key() != RunConfig(protocol="joint").key()
    with pytest.raises(ConfigError, match="needs protocol joint"):
        RunConfig(sup_weight=2.0).validate()
    for bad, pattern in [(dict(lr=float("inf")), "learning rate"), (dict(weight_decay=-1.0), "weight_decay"),
                         (dict(protocol="joint", sup_weight=float("nan")), "sup_weight"),
                         (dict(protocol="joint", sup_batch_size=0), "sup_batch_size"),
                         (dict(patience=0), "patience"), (dict(patience=True), "patience"),
                         (dict(patience=2.5), "patience")]:
        with pytest.raises(ConfigError, match=pattern):
            RunConfig(**bad).validate()


# -- early stopping -----------------------------------------------------------------------------------
def test_patience_ends_a_run_that_stopped_improving_and_changes_nothing_before():
    """At a learning rate too small to move a float32 weight, validation accuracy never beats epoch 1's: with
    patience 2 the run ends after epoch 3 of 6, with epoch 1 its best, and its three epochs are the numbers of the
    same run without patience; a run that keeps improving past its patience is not cut."""
    data = _data(0)
    still = RunConfig(estimator="trace", aux=True, epochs=6, steps_per_epoch=3, seed=1, lr=1e-12, **TINY)
    stopped = train(replace(still, patience=2), data)
    whole = train(still, data)
    m = stopped.metrics
    assert [row["epoch"] for row in stopped.curves] == [1, 2, 3] and len(whole.curves) == 6
    assert m["best_epoch"] == 1 and m["epochs"] == 6 and m["epochs_run"] == 3 and m["steps"] == 3 * 3
    assert m["seconds_per_epoch"] == pytest.approx(m["train_seconds"] / 3)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in rows]
    assert drop(stopped.curves) == drop(whole.curves[:3])
    assert m["test_acc_at_best_valid"] == whole.metrics["test_acc_at_best_valid"]
    learns = RunConfig(estimator="trace", aux=True, epochs=8, seed=1, lr=3e-2, aux_multiplier=300.0, **TINY)
    free = train(learns, data)
    ends = {patience: _end(free.curves, patience) for patience in (1, 2, 8)}
    assert ends[1] < ends[2] < 8 == ends[8]  # this run stalls, recovers, then stalls for good
    for patience, end in ends.items():
        capped = train(replace(learns, patience=patience), data)
        assert drop(capped.curves) == drop(free.curves[:end]) and capped.metrics["epochs_run"] == end
        # the replay that chooses a patience before a grid runs (bench.analysis.patience) ends it at the same epoch
        assert end_and_best([row["valid_acc"] for row in free.curves], patience) == (end, capped.metrics["best_epoch"])


def _end(curves, patience: int) -> int:
    """The oracle: the epoch after which ``patience`` ends a run with these validation accuracies."""
    best, best_epoch = -1.0, 0
    for row in curves:
        if row["valid_acc"] > best:
            best, best_epoch = row["valid_acc"], row["epoch"]
        if row["epoch"] - best_epoch >= patience:
            return row["epoch"]
    return len(curves)


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
