"""Each estimator is one record (issue 27): its family, option defaults, tuning candidates, hand-written
counterpart (or the reason for none), particles and step cost live in its registry entry and nowhere
else; the readers (the report's families, ssvae.reference, ssvae.flops, bench.run.cost, bench.run.tune, bench.report.tune_study) read it."""
import ast
import dataclasses

import pytest

from bench.run import cost, tune
from bench.report import tune_study
from bench.report.common import FAMILY_RULES, family
from ssvae import flops, reference
from ssvae.errors import ConfigError
from ssvae.estimators import FAMILIES, REGISTRY, searched_options
from ssvae.model import SSVAE

from .conftest import REPO

TINY = dict(input_size=4, z_dim=1, hidden=(2,))


# -- every record is complete ----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_record_has_family_defaults_step_weight_and_counterpart_or_reason(name):
    est = REGISTRY[name]
    assert est.family in FAMILIES
    assert isinstance(est.defaults, dict) and isinstance(est.search, dict)
    assert searched_options(est.search) <= set(est.defaults)
    assert isinstance(est.step_weight, float) and est.step_weight > 0
    assert bool(est.counterpart) != bool(est.no_counterpart_reason), "a counterpart, or the reason for none"
    assert est.particles is None or (isinstance(est.particles, int) and est.particles >= 0)
    assert isinstance(est.labeled_particles, int) and est.labeled_particles >= 1


@pytest.mark.parametrize("missing, message", [
    ({"family": "mystery"}, "lacks family"),
    ({"step_weight": None}, "lacks step_weight"),
    ({"counterpart": None}, "counterpart or no_counterpart_reason"),
    ({"no_counterpart_reason": "both given"}, "counterpart or no_counterpart_reason"),
    ({"search": {"j": [1, 2]}}, "defaults of the searched option"),
])
def test_an_incomplete_record_is_refused(missing, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(REGISTRY["rloo"], **missing)


def test_every_family_has_a_colour_and_no_colour_is_unused():
    assert {fam for fam, _, _ in FAMILY_RULES} == set(FAMILIES)


# -- the builders and the readers read the record --------------------------------------------------

@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_builder_knows_exactly_the_records_options(name):
    est = REGISTRY[name]
    known = ", ".join(sorted(est.defaults)) or "none"
    with pytest.raises(ConfigError, match=f"has no option.*\\(known: {known}\\)"):
        est.build(SSVAE(**TINY), {"no-such-option": 1})
    est.build(SSVAE(**TINY), dict(est.defaults))  # the defaults are valid options


def test_a_changed_default_in_the_record_changes_what_is_built(monkeypatch):
    for name, option, value, read in (("rloo", "k", 3, lambda o: o.loss.k),
                                      ("rb-topk", "k", 2, lambda o: o.loss.k),
                                      ("unordered-set", "k", 6, lambda o: o.loss.k),
                                      ("nvil", "alpha", 0.5, lambda o: o.loss.alpha)):
        est = REGISTRY[name]
        monkeypatch.setitem(REGISTRY, name, dataclasses.replace(est, defaults={**est.defaults, option: value}))
        assert read(REGISTRY[name].build(SSVAE(**TINY), {})) == value, name


def test_the_readers_take_family_counterpart_particles_and_cost_from_the_records():
    for name, est in REGISTRY.items():
        assert family(name) == est.family
        assert cost.STEP_WEIGHT[name] == est.step_weight
        if est.kind == "ssvae":
            assert reference.counterpart(name, "unsup") == est.counterpart
            assert (name in reference.NO_COUNTERPART) == (est.counterpart is None)
            assert (reference.counterpart(name, "sup") is None) == (est.labeled_particles > 1)
            if est.counterpart:
                assert flops.UNSUP_PARTICLES[est.counterpart] == est.particles
                assert est.counterpart in reference.REFERENCE_LOSSES
    # a name the registry does not know still gets a family from its prefix
    assert family("vimco") == "score function" and family("mystery") is None


def test_tuning_takes_the_records_candidates_and_defaults():
    filled = tune.check_tune({"lr": [1e-3]}, ["nvil", "rloo", "gumbel"])
    assert filled["nvil"] == REGISTRY["nvil"].search and filled["gumbel"] == REGISTRY["gumbel"].search
    assert "rloo" not in filled  # nothing to search beyond the table
    own = tune.check_tune({"lr": [1e-3], "nvil": {"alpha": [0.5]}}, ["nvil"])
    assert own["nvil"] == {"alpha": [0.5]}  # a preset's own table replaces the record's
    assert tune.check_tune({}, ["nvil"]) == {}  # no [tune] table: no tuning at all
    assert tune_study._is_default("rloo", "k", REGISTRY["rloo"].defaults["k"]) and not tune_study._is_default("rloo", "k", 3)


# -- and nowhere else ------------------------------------------------------------------------------

#: the modules that define estimators: the registry and each estimator's own module
ESTIMATOR_MODULES = {"ssvae/estimators.py", "ssvae/rb.py", "ssvae/rloo.py", "ssvae/nvil.py", "ssvae/relax.py",
                     "ssvae/unordered_set.py"}
#: names that are roles, not just estimators: Pyro's two variants (trace, enum), the exact reference
#: every comparison is made against (enum), the supervised baseline (also a step kind and a report row)
ROLES = {"trace", "enum", "baseline"}
#: every other place a module names an estimator, and why it stays
ALLOWED = {
    ("bench/report/common.py", "gumbel"): "FAMILY_RULES: a prefix for names the registry does not know",
    ("bench/report/common.py", "nvil"): "FAMILY_RULES: a prefix for names the registry does not know",
}


def _named_estimators(path):
    """(name, line) of every string constant in ``path`` that is exactly a registered estimator's name."""
    tree = ast.parse(path.read_text())
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in REGISTRY]


def test_no_other_module_names_an_estimator():
    found = {}
    for path in sorted(p for d in ("bench", "ssvae") for p in (REPO / d).rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if rel in ESTIMATOR_MODULES:
            continue
        for name, line in _named_estimators(path):
            if name not in ROLES and (rel, name) not in ALLOWED:
                found.setdefault(rel, []).append(f"{name!r} (line {line})")
    assert found == {}, f"estimator names outside their records: {found}"
