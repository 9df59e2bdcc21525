"""Training one configuration, under one of two protocols (``RunConfig.protocol``).

**Schedule (both protocols).** Each epoch walks the unlabeled images in freshly shuffled
mini-batches of ``batch_size`` and slips a labeled mini-batch in at every batch index ``i`` with
``i % int(50000 / labels) == 1`` until the labeled batches are used up, as
``run_inference_for_epoch`` in Pyro's ``examples/vae/ss_vae_M2.py`` does (above 25,000 labels the
period is 1 and the labeled batches come first, where Pyro's loop would take none). Both SVI
objects share one Adam, as in Pyro (one ``torch.optim.Adam`` per parameter).

**``pyro``: Pyro's loop, exactly.** Every loss steps on every batch. A labeled batch takes an ELBO
step (y observed) and, with the auxiliary loss, a ``model_classify`` step; an unlabeled batch takes
an ELBO step (y latent) and, with the auxiliary loss, a ``model_classify`` step as well. That last
step has no data (``ys`` is None: no sample site, loss 0), yet ``SVI.step`` collects every parameter
``pyro.module`` registered and hands it to Adam holding the zero gradient that the previous step's
``zero_grads`` left: Adam moves every SS-VAE parameter by its momentum
(``m <- b1 m``, ``v <- b2 v``, ``p <- p - lr m_hat / (sqrt(v_hat) + eps)``) and advances its
bias-correction count. The batch size must divide the label count (and the 50,000 training and
10,000 validation and test images), as Pyro's asserts require: every labeled batch is full, so 100
labels run at batch size 100 (or 50, 20...), not 200.

**``bench`` (the default) differs in exactly two ways.** (1) An unlabeled batch takes the ELBO step
only: no empty auxiliary step, so no extra momentum step (with the auxiliary loss Pyro's loop takes
two Adam steps per unlabeled batch, this one takes one). (2) The batch size need not divide the label
count: an epoch's last labeled batch is partial (100 labels at batch size 200: one batch of 100).
Without the auxiliary loss the two protocols are the same loop.

**``joint``: a labeled batch in every step** (Kingma et al.'s ``learn_yz_x_ss.py`` and Liu et al.'s
semi-supervised MNIST code feed labels this way). An epoch walks the unlabeled images in shuffled
batches of ``batch_size``; every step also takes the next ``sup_batch_size`` labeled images (default
``min(batch_size, labels)``), cycling through the labeled set in fresh shuffles, and takes ONE Adam
step on the one loss::

    loss = -ELBO(x_u)  +  sup_weight * ( -ELBO(x_l, y_l)  +  aux_multiplier * CE(q(y|x_l), y_l) )

(sums over each batch; the auxiliary term only with ``aux``). Kingma's setting at 100 labels is one
labeled image beside 499 unlabeled ones with the classification term weighted 50 per image.

In every protocol the supervised-only baseline takes labeled batches only (of ``sup_batch_size``
under ``joint``), as many as an SS-VAE epoch has steps. ``weight_decay`` (Adam's L2 term, default 0)
applies to any protocol. Not part of any loop: our networks output logits (Pyro's 2017 example
clipped a sigmoid/softmax at 1e-7; today's passes probabilities, which torch clamps at float eps).

**Evaluation.** After every epoch the classifier is scored on the validation and test images, and
the discrete model's test ELBO (y summed exactly, :mod:`ssvae.evaluate`) is computed for every
SS-VAE estimator, relaxations included: it is the objective they are all compared on. After the
last epoch an importance-weighted bound on log p(x) is taken (k = ``evaluate.IWAE_K`` per label, on
the first ``evaluate.IWAE_IMAGES`` test images). The supervised baseline trains no generative model:
its ELBO columns are empty. The result reports the test accuracy at the best validation epoch
(Pyro's Table 1 figure). Evaluation draws its noise from its own generator and is not training time. With
``patience`` (early stopping; Pyro's script has none) the run ends once that many epochs have passed since its
best validation epoch: ``epochs`` is then a cap, and ``metrics["epochs_run"]`` says how many ran.

A run is a function of its :class:`RunConfig`: the seed fixes the labeled subset, the
initialisation, the shuffling and every sample. Cells that differ only by estimator (or aux, or
protocol) share the seed's labeled subset, initial weights and batch order: they are paired.

**Resuming.** A long run may be cut short (a working session ends by killing its processes).
``train(..., on_epoch_end=f)`` hands ``f`` the run's state after every finished epoch (parameters,
Adam's moments, the RNG streams, the estimator's Python-side state, the curves so far:
:meth:`Trainer.state_dict` and :func:`rng_states`), and ``train(..., resume=state)`` continues from
the epoch after it: the same numbers to the last bit as the run that was not interrupted (only the
timings differ).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pyro
import pyro.optim
import torch
from pyro.infer import SVI
from pyro.infer.util import zero_grads
from torch import nn

from .config import RunConfig
from .data import SSData, Split
from .evaluate import EvalPlan, mean_elbo, mean_iwae
from .errors import DivergedError, left_support
from .estimators import Estimator, Objective, get_estimator, validate
from .model import SSVAE
from .resume import RESUME_VERSION, check_resume, copied, load_trainer_state, rng_states, set_rng_states, trainer_state

STEP_KINDS = ("sup", "unsup", "aux")
def set_seed(seed: int) -> None:
    pyro.set_rng_seed(seed)  # python, numpy and torch (all devices)


@contextlib.contextmanager
def preserved_rng():
    """Run a block (a measurement probe) without moving the training RNG streams."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def accuracy(ss: SSVAE, split: Split, batch_size: int = 2000) -> float:
    correct = 0
    for xs, ys in split.batches(batch_size):
        correct += (ss.classify(xs) == ys.argmax(-1)).sum().item()
    return correct / max(len(split), 1)


def epoch_schedule(n_sup: int, n_unsup: int, batch_size: int, train_size: int, protocol: str = "bench") -> List[str]:
    """The kinds ('sup' or 'unsup') of the mini-batches of one epoch, in Pyro's order; under protocol
    ``joint`` every step is 'joint' (an unlabeled batch and a labeled one), one per unlabeled batch."""
    if protocol == "joint":
        return ["joint"] * math.ceil(n_unsup / batch_size)
    sup_batches = math.ceil(n_sup / batch_size)
    unsup_batches = math.ceil(n_unsup / batch_size)
    period = max(int(train_size / max(n_sup, 1)), 1)
    slot = 1 if period > 1 else 0
    kinds, s, u = [], 0, 0
    for i in range(sup_batches + unsup_batches):
        if (i % period == slot and s < sup_batches) or u >= unsup_batches:
            kinds.append("sup")
            s += 1
        else:
            kinds.append("unsup")
            u += 1
    return kinds


class Trainer:
    """The state of one run: networks, optimiser, objectives and data.

    ``step(kind, xs, ys)`` takes one optimisation step; ``objective(kind)`` returns what
    a probe needs to draw gradient estimates without stepping.
    """

    def parameters_finite(self) -> bool:
        """Whether every parameter in Pyro's param store (networks and baselines) is finite."""
        return all(bool(torch.isfinite(p).all()) for _, p in pyro.get_param_store().named_parameters())

    def __init__(self, cfg: RunConfig, data: SSData):
        self.cfg = cfg
        self.data = data
        self.estimator: Estimator = get_estimator(cfg.estimator)
        set_seed(cfg.seed)
        pyro.clear_param_store()
        self.ss = SSVAE(input_size=data.sup.x.shape[1], z_dim=cfg.z_dim, hidden=cfg.hidden,
                        aux_multiplier=cfg.aux_multiplier).to(data.device)
        self.main = self.estimator.build(self.ss, cfg.option_dict)
        self.optim = pyro.optim.Adam(self._adam_args if self.main.lr_by_module else self._adam_args("", ""))
        self.svi = SVI(self.main.model, self.main.guide, self.optim, loss=self.main.loss)
        self.use_aux = cfg.aux and self.estimator.kind == "ssvae"
        #: Pyro's loop: the auxiliary loss also steps (on no data) after every unlabeled batch.
        self.aux_on_unsup = self.use_aux and cfg.protocol == "pyro"
        if self.use_aux:
            self.aux = Objective(self.ss.model_classify, self.ss.guide_classify, pyro.infer.Trace_ELBO())
            self.svi_aux = SVI(self.aux.model, self.aux.guide, self.optim, loss=self.aux.loss)
        self.shuffle = torch.Generator().manual_seed(cfg.seed + 1)
        self.global_step = 0

    def _adam_args(self, module_name: str, param_name: str) -> dict:
        """Adam's settings per parameter: the estimator's own modules may have their own learning rate."""
        lr = (self.main.lr_by_module or {}).get(module_name, self.cfg.lr)
        args = {"lr": lr, "betas": (self.cfg.beta1, 0.999)}
        if self.cfg.weight_decay:
            args["weight_decay"] = self.cfg.weight_decay
        return args

    @property
    def sup_batch_size(self) -> int:
        """Labeled images per labeled batch: ``sup_batch_size`` under protocol joint, else the batch size."""
        return self.cfg.sup_batch_size or (min(self.cfg.batch_size, len(self.data.sup))
                                           if self.cfg.protocol == "joint" else self.cfg.batch_size)

    # -- schedule ---------------------------------------------------------------------------
    def schedule(self) -> List[str]:
        d, cfg = self.data, self.cfg
        kinds = epoch_schedule(len(d.sup), len(d.unsup), cfg.batch_size, len(d.sup) + len(d.unsup), cfg.protocol)
        if self.estimator.kind == "supervised":
            # the baseline sees only labeled batches; an "epoch" has as many steps as the SS-VAE's
            kinds = ["sup"] * len(kinds)
        if cfg.steps_per_epoch is not None:
            kinds = kinds[:cfg.steps_per_epoch]
        return kinds

    def batches(self, kinds: List[str]) -> Iterator[Tuple[str, torch.Tensor, Optional[torch.Tensor]]]:
        """Yield (kind, xs, ys) with freshly shuffled index slices of the labeled/unlabeled sets.

        A ``joint`` step's ``xs`` is its unlabeled batch and its ``ys`` the pair (labeled images, labels)."""
        d = self.data
        sizes = {"sup": self.sup_batch_size, "unsup": self.cfg.batch_size}
        perms = {"sup": None, "unsup": None}
        pos = {"sup": 0, "unsup": 0}
        splits = {"sup": d.sup, "unsup": d.unsup}

        def take(part: str) -> torch.Tensor:
            split = splits[part]
            if perms[part] is None or pos[part] >= len(split):
                perms[part] = torch.randperm(len(split), generator=self.shuffle).to(d.device)
                pos[part] = 0
            idx = perms[part][pos[part]:pos[part] + sizes[part]]
            pos[part] += sizes[part]
            return idx

        for kind in kinds:
            if kind == "joint":
                xu = d.unsup.x[take("unsup")]
                idx = take("sup")
                yield kind, xu, (d.sup.x[idx], d.sup.y[idx])
            else:
                idx = take(kind)
                yield kind, splits[kind].x[idx], (d.sup.y[idx] if kind == "sup" else None)

    # -- one step ----------------------------------------------------------------------------
    def step(self, kind: str, xs: torch.Tensor, ys: Optional[torch.Tensor]) -> Dict[str, float]:
        """One optimisation step on a batch; returns the losses it took (by step kind)."""
        self.main.at_step(self.global_step)  # step-dependent objectives (annealed temperatures)
        out = {}
        if kind == "joint":
            return self.joint_step(xs, *ys)
        if kind == "sup":
            out["sup"] = self.svi.step(xs, ys)
            if self.use_aux:
                out["aux"] = self.svi_aux.step(xs, ys)
        else:
            out["unsup"] = self.svi.step(xs)
            if self.aux_on_unsup:  # loss 0; Adam still takes a momentum step on every parameter
                out["aux"] = self.svi_aux.step(xs)
        return out

    def joint_step(self, xs: torch.Tensor, sup_xs: torch.Tensor, sup_ys: torch.Tensor) -> Dict[str, float]:
        """Protocol ``joint``: one Adam step on the unlabeled batch's loss plus ``sup_weight`` times the labeled
        batch's (its ELBO with y observed and, with the auxiliary loss, the classification term), the body of
        Pyro's ``SVI.step`` with the three losses' gradients summed before the step. Returns each loss
        unweighted."""
        w = self.cfg.sup_weight
        with pyro.poutine.trace(param_only=True) as capture:
            out = {"unsup": self.main.loss_and_grads(xs)}
            with pyro.poutine.scale(scale=w):
                out["sup"] = self.main.loss_and_grads(sup_xs, sup_ys) / w
                if self.use_aux:
                    out["aux"] = self.aux.loss_and_grads(sup_xs, sup_ys) / w
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        self.optim(params)
        zero_grads(params)
        return {k: float(v) for k, v in out.items()}

    # -- resuming ----------------------------------------------------------------------------
    def pyro_modules(self) -> Dict[str, nn.Module]:
        """The networks whose parameters Pyro's param store holds, by module name: the SS-VAE's and the
        estimator's own (NVIL's or trace-bx's baseline)."""
        return {SSVAE.PYRO_NAME: self.ss, **self.main.modules}

    def state_dict(self) -> dict:
        """What the next step depends on beyond the config and the data, copied (:func:`ssvae.resume.copied`).

        ``param_store``: every entry of Pyro's param store, unconstrained, with its constraint's name (the
        networks, the estimator's baselines, NVIL's running statistics, trace-avg's decaying average);
        ``optimizer``: Adam's state per parameter name (Pyro keeps one ``torch.optim.Adam`` per
        parameter), including the states a resumed run has not handed back yet (Adam takes them when a
        parameter's first step after the resume comes); ``shuffle``: the batch-order generator;
        ``objective``: the estimator's Python-side state (:meth:`Objective.state_dict`).
        """
        return trainer_state(self)

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s state, on a freshly built trainer of the same config.

        Pyro's store must hold each network's own tensors (``pyro.module`` returns the stored tensor, and
        a network computing with another would not be the one Adam steps), so the networks named in the
        saved store are registered first and the saved values copied into them, in place; entries of no
        network (running statistics) are created. Adam's states are handed to Pyro's optimiser, which loads
        each when its parameter next steps.
        """
        load_trainer_state(self, state)

    def objective(self, step_kind: str) -> Objective:
        return self.aux if step_kind == "aux" else self.main

    def params(self) -> List[torch.Tensor]:
        return [p for p in self.ss.parameters()]

    def evaluate(self) -> Tuple[float, float]:
        return accuracy(self.ss, self.data.valid), accuracy(self.ss, self.data.test)

    @property
    def has_elbo(self) -> bool:
        """Whether this run trains the generative model (the supervised baseline does not)."""
        return self.estimator.kind == "ssvae"

    def test_elbo(self, plan: EvalPlan = EvalPlan()) -> Optional[float]:
        """The discrete model's mean test ELBO per image, y summed exactly (None for the baseline)."""
        if not self.has_elbo or plan.elbo_images == 0:
            return None
        return mean_elbo(self.ss, self.data.test, images=plan.elbo_images)

    def test_iwae(self, plan: EvalPlan = EvalPlan()) -> Optional[float]:
        """The importance-weighted bound on log p(x), test subset (None for the baseline)."""
        if not self.has_elbo or plan.iwae_images == 0:
            return None
        return mean_iwae(self.ss, self.data.test, k=plan.iwae_k, images=plan.iwae_images)


@dataclass
class RunResult:
    config: dict
    metrics: dict
    curves: List[dict] = field(default_factory=list)
    data_sha256: str = ""

    def summary(self) -> dict:
        c = self.config
        return {"estimator": c["estimator"], "aux": c["aux"], "labels": c["labels"], "seed": c["seed"],
                "device": c["device"], **self.metrics, "data_sha256": self.data_sha256}


def patience_spent(epoch: int, best_epoch: int, patience: Optional[int]) -> bool:
    """Early stopping's rule: after ``epoch``, whether ``patience`` epochs have passed since the best one."""
    return patience is not None and epoch - best_epoch >= patience


def train(cfg: RunConfig, data: SSData,
          callback: Optional[Callable[[dict], None]] = None,
          on_step: Optional[Callable[[Trainer, int], None]] = None,
          evaluation: EvalPlan = EvalPlan(),
          resume: Optional[dict] = None,
          on_epoch_end: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Train one configuration and score it every epoch.

    ``callback(event)`` receives ``{"event": "step"|"epoch", ...}`` for progress display.
    ``on_step(trainer, global_step)`` runs before each step (and once after the last, with
    the final step count): measurement probes hook in here, inside :func:`preserved_rng`
    so that they do not change the run.
    ``evaluation`` sets how many test images the test ELBO and the final bound cover (default:
    the ELBO on all of them, the bound with k = 100 on the first 1000); evaluation time counts in
    ``eval_seconds``, never in the training time.
    ``on_epoch_end(state)`` receives, after each finished epoch (its evaluation and curve row done), the
    run's state: a dict of tensors and plain values, copied, that ``torch.save`` writes and
    ``torch.load(weights_only=True)`` reads. ``resume=state`` continues from the epoch after that state's,
    with the very numbers of the run that was not interrupted (timings aside); a state of another
    config, data or evaluation plan raises ``ValueError`` (:func:`check_resume`).
    Raises :class:`DivergedError` if a loss becomes NaN or infinite, a parameter does, or (after the first step)
    a distribution's argument leaves its support (:func:`left_support`).
    """
    validate(cfg)
    if resume is not None:
        check_resume(resume, cfg, data, evaluation)
    trainer = Trainer(cfg, data)
    kinds = trainer.schedule()
    n_sup_ex = sum(min(trainer.sup_batch_size, len(data.sup)) for k in kinds if k in ("sup", "joint"))
    n_unsup_ex = sum(1 for k in kinds if k in ("unsup", "joint")) * cfg.batch_size
    curves: List[dict] = []
    best_valid, test_at_best, best_epoch = -1.0, float("nan"), 0
    train_seconds = eval_seconds = 0.0
    first_epoch = 1
    if resume is not None:  # the fresh trainer was built (and seeded) as the run's was; now its state
        trainer.load_state_dict(resume["trainer"])
        set_rng_states(resume["rng"])
        curves = [dict(row) for row in resume["curves"]]
        best_valid, test_at_best, best_epoch = resume["best_valid"], resume["test_at_best"], resume["best_epoch"]
        train_seconds, eval_seconds = resume["train_seconds"], resume["eval_seconds"]
        first_epoch = resume["epoch"] + 1

    def state(epoch: int) -> dict:
        return {"version": RESUME_VERSION, "epoch": epoch, "config": cfg.to_dict(), "data_sha256": data.sha256,
                "evaluation": dataclasses.asdict(evaluation), "trainer": trainer.state_dict(),
                "rng": copied(rng_states(data.device)), "curves": [dict(row) for row in curves],
                "best_valid": best_valid, "test_at_best": test_at_best, "best_epoch": best_epoch,
                "train_seconds": train_seconds, "eval_seconds": eval_seconds}

    for epoch in range(first_epoch, cfg.epochs + 1):
        if patience_spent(epoch - 1, best_epoch, cfg.patience):  # before the epoch: a state saved after it ends too
            break
        sums = {"sup": 0.0, "unsup": 0.0, "aux": 0.0}
        t0 = time.perf_counter()
        for i, (kind, xs, ys) in enumerate(trainer.batches(kinds)):
            if on_step is not None:
                synchronize(data.device)
                t_probe = time.perf_counter()
                with preserved_rng():
                    on_step(trainer, trainer.global_step)
                t0 += time.perf_counter() - t_probe  # probes do not count as training time
            try:
                losses = trainer.step(kind, xs, ys)
            except ValueError as exc:  # Pyro's argument checks see a NaN/inf parameter before the loss does
                if not trainer.parameters_finite():
                    raise DivergedError(trainer.global_step, epoch, float("nan"), kind) from exc
                left = left_support(exc) if trainer.global_step > 0 else ""
                if left:  # finite parameters whose outputs overflowed or underflowed out of a support
                    raise DivergedError(trainer.global_step, epoch, float("nan"), kind, left) from exc
                raise
            for k, v in losses.items():
                if not math.isfinite(v):
                    raise DivergedError(trainer.global_step, epoch, v, k)
                sums[k] += v
            trainer.global_step += 1
            if callback is not None:
                callback({"event": "step", "epoch": epoch, "step": i + 1, "steps": len(kinds),
                          "global_step": trainer.global_step})
        synchronize(data.device)
        train_seconds += time.perf_counter() - t0
        t1 = time.perf_counter()
        valid_acc, test_acc = trainer.evaluate()
        test_elbo = trainer.test_elbo(evaluation)
        eval_seconds += time.perf_counter() - t1
        if valid_acc > best_valid:  # strict, as in Pyro: the first best epoch wins
            best_valid, test_at_best, best_epoch = valid_acc, test_acc, epoch
        row = {"epoch": epoch, "valid_acc": valid_acc, "test_acc": test_acc,
               "loss_sup": sums["sup"] / max(n_sup_ex, 1), "loss_unsup": sums["unsup"] / max(n_unsup_ex, 1),
               "loss_aux": sums["aux"] / max(n_sup_ex, 1), "test_elbo": test_elbo,
               "elapsed_seconds": train_seconds, "global_step": trainer.global_step}
        curves.append(row)
        if on_epoch_end is not None:  # before the progress event: an epoch reported done is saved
            on_epoch_end(state(epoch))
        if callback is not None:
            callback({"event": "epoch", **row})
    if on_step is not None:
        with preserved_rng():
            on_step(trainer, trainer.global_step)
    t3 = time.perf_counter()
    test_iwae = trainer.test_iwae(evaluation)
    eval_seconds += time.perf_counter() - t3
    metrics = {
        "test_acc_at_best_valid": test_at_best, "best_valid_acc": best_valid, "best_epoch": best_epoch,
        "final_test_acc": curves[-1]["test_acc"], "final_valid_acc": curves[-1]["valid_acc"],
        "epochs": cfg.epochs, "epochs_run": len(curves), "steps": trainer.global_step, "steps_per_epoch": len(kinds),
        "train_seconds": train_seconds, "eval_seconds": eval_seconds,
        "seconds_per_epoch": train_seconds / len(curves),
        "final_test_elbo": curves[-1]["test_elbo"], "test_iwae": test_iwae,
        "elbo_images": evaluation.count(evaluation.elbo_images, data.test) if trainer.has_elbo else None,
        "iwae_k": evaluation.iwae_k if trainer.has_elbo and evaluation.iwae_images != 0 else None,
        "iwae_images": evaluation.count(evaluation.iwae_images, data.test) if trainer.has_elbo else None,
        "protocol": cfg.protocol,
    }
    result = RunResult(cfg.to_dict(), metrics, curves, data.sha256)
    result.trainer = trainer  # for callers that want the trained networks (not serialised)
    return result
