"""The hand-written reference computes what Pyro computes: same losses, same gradients, same noise."""
import pyro
import pytest
import torch

from ssvae import reference as ref
from ssvae.estimators import REGISTRY, Objective, get_estimator
from ssvae.model import SSVAE


@pytest.fixture(params=["tiny", "small"])
def net_and_batch(request):
    pyro.set_rng_seed(1)
    if request.param == "tiny":
        ss = SSVAE(input_size=12, z_dim=3, hidden=(8,))
        n = 5
    else:  # two hidden layers, bigger batch: every shape path
        ss = SSVAE(input_size=30, z_dim=4, hidden=(16, 12))
        n = 17
    # move the parameters away from Pyro's near-zero init so that every term matters
    with torch.no_grad():
        for p in ss.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(3)
    xs = (torch.rand(n, ss.input_size, generator=g) > 0.5).float()
    ys = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=g), 10).float()
    return ss, xs, ys


def pyro_loss_and_grads(ss, objective: Objective, seed, *args):
    ss.zero_grad(set_to_none=True)
    pyro.set_rng_seed(seed)
    loss = objective.loss_and_grads(*args)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in ss.parameters()]
    ss.zero_grad(set_to_none=True)
    return loss, grads


def ref_loss_and_grads(ss, kind, seed, xs, ys=None):
    ss.zero_grad(set_to_none=True)
    pyro.set_rng_seed(seed)
    surrogate, loss = ref.REFERENCE_LOSSES[kind](ss, xs, ys)
    surrogate.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in ss.parameters()]
    ss.zero_grad(set_to_none=True)
    return loss, grads


def assert_grads_close(a, b, rtol=1e-4, atol=1e-5):
    assert len(a) == len(b)
    for ga, gb in zip(a, b):
        scale = gb.abs().max().item() + 1e-12
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol * scale)


def _aux_objective(ss, multiplier=None):
    def model(xs, ys=None):
        return ss.model_classify(xs, ys, multiplier=multiplier)

    return Objective(model, ss.guide_classify, pyro.infer.Trace_ELBO())


@pytest.mark.parametrize("seed", [0, 5])
def test_enum_unsup_loss_and_gradient_match_pyro(net_and_batch, seed):
    ss, xs, _ = net_and_batch
    p_loss, p_grads = pyro_loss_and_grads(ss, get_estimator("enum").build(ss, {}), seed, xs)
    r_loss, r_grads = ref_loss_and_grads(ss, "unsup-enum", seed, xs)
    assert r_loss == pytest.approx(p_loss, rel=1e-5)
    assert_grads_close(r_grads, p_grads)
    # the noise matters: another seed gives another loss
    other, _ = ref_loss_and_grads(ss, "unsup-enum", seed + 1, xs)
    assert other != pytest.approx(r_loss, rel=1e-6)


def test_sequential_enum_loss_and_gradient_match_pyro(net_and_batch):
    ss, xs, _ = net_and_batch
    p_loss, p_grads = pyro_loss_and_grads(ss, get_estimator("enum-seq").build(ss, {}), 2, xs)
    r_loss, r_grads = ref_loss_and_grads(ss, "unsup-enum-seq", 2, xs)
    assert r_loss == pytest.approx(p_loss, rel=1e-5)
    assert_grads_close(r_grads, p_grads)


@pytest.mark.parametrize("seed", [0, 5])
def test_sampled_unsup_loss_and_surrogate_gradient_match_trace_elbo(net_and_batch, seed):
    ss, xs, _ = net_and_batch
    p_loss, p_grads = pyro_loss_and_grads(ss, get_estimator("trace").build(ss, {}), seed, xs)
    r_loss, r_grads = ref_loss_and_grads(ss, "unsup-sampled", seed, xs)
    assert r_loss == pytest.approx(p_loss, rel=1e-5)
    assert_grads_close(r_grads, p_grads)
    # encoder_y's gradient is the score-function term: non-zero, and it depends on the y draw
    assert any(p.abs().sum() > 0 for p in r_grads[:len(list(ss.encoder_y.parameters()))])


def test_sampled_draws_y_as_pyro_does(net_and_batch):
    ss, xs, _ = net_and_batch
    guide_trace = None
    pyro.set_rng_seed(9)
    guide_trace = pyro.poutine.trace(ss.guide).get_trace(xs)
    pyro.set_rng_seed(9)
    with torch.no_grad():
        ys = ref.draw_y(ss.encoder_y(xs), 10)
        loc, scale = ss.encoder_z([xs, ys])
        z = ref.draw_z(loc, scale)
    assert torch.equal(ys, guide_trace.nodes["y"]["value"])
    torch.testing.assert_close(z, guide_trace.nodes["z"]["value"])


@pytest.mark.parametrize("name", [n for n, e in REGISTRY.items() if e.kind == "ssvae"])
def test_sup_loss_and_gradient_match_every_estimator(net_and_batch, name):
    """On a labeled batch every SS-VAE estimator computes the supervised ELBO, so does the reference.

    No estimator is exempt: a labeled step that is not the supervised ELBO (averaged over the
    estimator's particles) fails here. k vectorised particles draw their z in one (k, B, z) call:
    the same noise as one call on the batch repeated k times, so the reference runs on that batch
    and is divided by k.
    """
    ss, xs, ys = net_and_batch
    objective = get_estimator(name).build(ss, {})
    k = int(getattr(objective.loss, "num_particles", 1) or 1)
    p_loss, p_grads = pyro_loss_and_grads(ss, objective, 4, xs, ys)
    r_loss, r_grads = ref_loss_and_grads(ss, "sup", 4, xs.repeat(k, 1), ys.repeat(k, 1))
    assert p_loss == pytest.approx(r_loss / k, rel=1e-5)
    assert_grads_close(p_grads, [g / k for g in r_grads])


def test_aux_loss_and_gradient_match_model_classify(net_and_batch):
    ss, xs, ys = net_and_batch
    p_loss, p_grads = pyro_loss_and_grads(ss, _aux_objective(ss), 0, xs, ys)
    r_loss, r_grads = ref_loss_and_grads(ss, "aux", 0, xs, ys)
    assert r_loss == pytest.approx(p_loss, rel=1e-5)
    assert_grads_close(r_grads, p_grads)
    assert r_loss == pytest.approx(ss.aux_multiplier * torch.nn.functional.cross_entropy(
        ss.encoder_y(xs), ys.argmax(-1), reduction="sum").item(), rel=1e-5)


def test_baseline_reference_matches_baseline_estimator(net_and_batch):
    ss, xs, ys = net_and_batch
    p_loss, p_grads = pyro_loss_and_grads(ss, get_estimator("baseline").build(ss, {}), 0, xs, ys)
    r_loss, r_grads = ref_loss_and_grads(ss, "baseline", 0, xs, ys)
    assert r_loss == pytest.approx(p_loss, rel=1e-5)
    assert_grads_close(r_grads, p_grads)


def test_sequential_reference_equals_parallel_under_the_same_z_noise(net_and_batch, monkeypatch):
    """enum-seq loops over the labels; with the same eps per label it is the parallel sum."""
    ss, xs, _ = net_and_batch
    eps = torch.randn(10, xs.shape[0], ss.z_dim)
    calls = []

    def fixed_draw(loc, scale):
        e = eps if loc.dim() == 3 else eps[9 - len(calls)]  # the loop runs labels 9..0
        calls.append(1)
        return loc + e * scale

    monkeypatch.setattr(ref, "draw_z", fixed_draw)
    with torch.no_grad():
        par = ref.unsup_enum_loss(ss, xs)[1]
        calls.clear()
        seq = ref.unsup_enum_seq_loss(ss, xs)[1]
    assert seq == pytest.approx(par, rel=1e-5)


def test_counterparts_cover_the_reference_estimators():
    assert ref.counterpart("enum", "unsup") == "unsup-enum"
    assert ref.counterpart("trace", "unsup") == "unsup-sampled"
    assert ref.counterpart("enum-seq", "unsup") == "unsup-enum-seq"
    assert ref.counterpart("trace", "aux") == "aux"
    assert ref.counterpart("baseline", "sup", "supervised") == "baseline"
    assert ref.counterpart("made-up", "unsup") is None
    for kind in set(ref.UNSUP_COUNTERPART.values()) | {"sup", "aux", "baseline"}:
        assert kind in ref.REFERENCE_LOSSES


def test_reference_step_uses_adam_and_moves_parameters(net_and_batch):
    ss, xs, ys = net_and_batch
    stepper = ref.ReferenceStepper(ss, lr=1e-3)
    before = [p.detach().clone() for p in ss.parameters()]
    losses = [stepper.step(kind, xs, ys) for kind in ("sup", "unsup-enum", "unsup-sampled", "aux")]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(b, p) for b, p in zip(before, ss.parameters()))
    assert isinstance(stepper.optim, torch.optim.Adam)
    assert stepper.optim.defaults["betas"] == (0.9, 0.999)
