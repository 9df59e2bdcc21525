"""The joint protocol's fields reach every cell of a grid, and leave earlier grids' env.json and cells alone."""
import pytest

from bench.run.grid import load_preset, make_grid, steps_per_epoch, train_configs
from bench.core.schema import SchemaError, grid_difference
from ssvae.config import SPARSE_FIELDS
from ssvae.errors import ConfigError

SMALL = dict(estimators=["enum"], aux=[True], baseline=True, labels=[100], seeds=2, epochs=2, batch_size=100)


def test_joint_fields_reach_every_cell_the_baseline_included():
    grid = make_grid({**SMALL, "protocol": "joint", "sup_batch_size": 10, "sup_weight": 0.5, "weight_decay": 1e-5})
    cfgs = train_configs(grid)
    assert {c.estimator for c in cfgs} == {"enum", "baseline"} and len(cfgs) == 4
    for c in cfgs:
        assert (c.protocol, c.sup_batch_size, c.sup_weight, c.weight_decay) == ("joint", 10, 0.5, 1e-5)
    assert steps_per_epoch(cfgs[0]) == 499  # one joint step per unlabeled batch of 100 (49,900 images)
    env = grid.to_dict()
    assert env["sup_weight"] == 0.5 and env["sup_batch_size"] == 10


def test_patience_reaches_every_cell_and_the_grid():
    grid = make_grid({**SMALL, "patience": 4})
    assert grid.to_dict()["patience"] == 4 and {c.patience for c in train_configs(grid)} == {4}


def test_a_grid_without_them_is_written_as_before():
    grid = make_grid(load_preset("long"))
    assert not set(SPARSE_FIELDS) & set(grid.to_dict())
    assert all(not set(SPARSE_FIELDS) & set(c.to_dict()) for c in train_configs(grid))
    # an older env.json (no such keys) and this grid are one grid; another weight is another grid
    old = grid.to_dict()
    assert grid_difference(old, make_grid(load_preset("long")).to_dict()) is None
    joint = make_grid({**SMALL, "protocol": "joint", "sup_weight": 0.5}).to_dict()
    assert grid_difference({**joint, "sup_weight": 2.0}, joint) == "sup_weight 2.0, not 0.5"


@pytest.mark.parametrize("bad, pattern", [
    (dict(protocol="joint", sup_weight=0.0), "sup_weight"),
    (dict(protocol="joint", sup_batch_size=0), "sup_batch_size"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(sup_weight=0.5), "needs protocol joint"),
    (dict(protocol="tf"), "protocol"),
    (dict(patience=0), "patience"),
    (dict(patience=2.5), "patience"),
    (dict(patience=3, search={"trials": 2}), "a search prunes its own trials"),
])
def test_bad_values_are_one_line_errors(bad, pattern):
    with pytest.raises((ConfigError, SchemaError), match=pattern) as err:
        make_grid({**SMALL, **bad})
    assert "\n" not in str(err.value)
