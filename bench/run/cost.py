"""What each kind of task costs, in enum-step equivalents: the one cost rule of the progress bar, the ETA
and ``bench list`` (``bench.run.tasks.KINDS`` names these functions; ``bench.run.tasks.cost_parts`` splits them)."""
from __future__ import annotations

from ssvae import RunConfig
from ssvae.config import TEST_SIZE
from ssvae.estimators import REGISTRY, get_estimator
from ssvae.evaluate import IWAE_IMAGES, IWAE_K, EvalPlan

from .grid import steps_per_epoch


def config_epochs(spec: dict) -> int:
    return (spec.get("config") or {}).get("epochs", 1)


#: work of an unlabeled step relative to enum's, for the ETA and ``bench list``: each estimator's record
#: (``Estimator.step_weight`` in ssvae/estimators.py, with its source). A name missing here counts as one.
STEP_WEIGHT = {name: est.step_weight for name, est in REGISTRY.items()}
#: a labeled step (y observed: nothing to enumerate or sample) relative to enum's unlabeled step
SUP_WEIGHT = 0.2
#: evaluation, in epochs of it (one: the exact test ELBO on all 10,000 test images and the accuracies):
#: on 2 cores, 5-epoch cells spent 33 s evaluating and 20-epoch cells 78 s, 3 s an epoch and 18 s at the
#: end, where the importance-weighted bound with the default k and images costs FINAL_EVAL_EPOCHS epochs.
#: The accuracies alone (all the supervised baseline evaluates) are ACCURACY_SHARE of an epoch. EVAL_STEPS:
#: one epoch of evaluation in enum-step equivalents (3 s against 0.1 s a step), for the progress bar.
FINAL_EVAL_EPOCHS = 6
ACCURACY_SHARE = 0.05
EVAL_STEPS = 30
#: each part of a task's work (``bench.run.tasks.cost_parts``) and its unit in enum-step equivalents
PART_STEPS = {"train": 1, "eval": EVAL_STEPS, "probe": 1}


def _probe_cost(spec: dict, estimators, references: bool = True) -> float:
    """The gradient probe, in enum-step equivalents: at each checkpoint, ``n_samples`` draws of every probed
    estimator's labeled and unlabeled steps and (``references``) ``reference_draws`` enumerated draws on
    both, one enum step each."""
    per = sum(spec.get("n_samples", 0) * (STEP_WEIGHT.get(e, 1.0) + SUP_WEIGHT) for e in estimators)
    per += 2 * spec.get("reference_draws", 0) if references else 0
    return len(spec.get("checkpoints") or []) * per


def own_probe_cost(spec: dict) -> float:
    """The probe on a cell's own run (SS-VAE estimators only: the baseline has no latent y)."""
    est = (spec.get("config") or {}).get("estimator", "")
    return _probe_cost(spec, [est]) if get_estimator(est).kind == "ssvae" else 0.0


def evaluation_epochs(spec: dict) -> float:
    """A cell's evaluation in epochs of it: every epoch the accuracies and the test ELBO on its share of
    the test images, and at the end the importance-weighted bound, ``iwae_k`` × ``iwae_images`` against
    the defaults' :data:`FINAL_EVAL_EPOCHS` (``ssvae.evaluate.EvalPlan``)."""
    est = (spec.get("config") or {}).get("estimator", "")
    if get_estimator(est).kind != "ssvae":
        return config_epochs(spec) * ACCURACY_SHARE
    plan = EvalPlan(**spec.get("evaluation", {}))
    elbo = 1.0 if plan.elbo_images is None else min(plan.elbo_images, TEST_SIZE) / TEST_SIZE
    iwae = (TEST_SIZE if plan.iwae_images is None else min(plan.iwae_images, TEST_SIZE)) * plan.iwae_k
    return config_epochs(spec) * (elbo + ACCURACY_SHARE) + FINAL_EVAL_EPOCHS * iwae / (IWAE_IMAGES * IWAE_K)


def train_cost(spec: dict) -> float:
    """Training steps, plus the evaluation and the probe on the cell's own run."""
    cfg = RunConfig.from_dict(spec.get("config") or {})
    train = config_epochs(spec) * steps_per_epoch(cfg) * STEP_WEIGHT.get(cfg.estimator, 1.0)
    return max(train, 1.0) + EVAL_STEPS * evaluation_epochs(spec) + own_probe_cost(spec)


def common_cost(spec: dict) -> float:
    """The draws at every checkpoint, plus the trajectory up to the last one and its references where the
    task trains it: a probe with a stateful baseline. (The first probe of each (labels, seed) trains it
    too, which the others then read from the trajectory cache; that one is not counted here.)"""
    stateful = any(get_estimator(e).stateful for e in spec["estimators"])
    return max(_probe_cost(spec, spec["estimators"], references=stateful)
               + (max(spec["checkpoints"]) if stateful else 0), 1.0)


def trajectory_cost(spec: dict) -> float:
    """What a common probe without a stateful baseline adds to :func:`common_cost` when it is the one that
    trains the shared trajectory (and computes its references) rather than reading them from the cache."""
    if spec.get("kind") != "common" or any(get_estimator(e).stateful for e in spec["estimators"]):
        return 0.0
    return max(spec["checkpoints"]) + 2 * spec.get("reference_draws", 0) * len(spec["checkpoints"])

