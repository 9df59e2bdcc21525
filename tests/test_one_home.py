"""One home per fact: Pyro's run defaults are written once (ssvae.config.RunConfig, read as DEFAULT_RUN)."""
import re

from ssvae.config import DEFAULT_RUN, RunConfig

from .conftest import REPO

SOURCES = sorted(p for d in ("bench", "ssvae") for p in (REPO / d).rglob("*.py"))


def test_pyros_learning_rate_and_aux_multiplier_are_written_once():
    assert (DEFAULT_RUN.lr, DEFAULT_RUN.aux_multiplier) == (0.00042, 46.0) == (RunConfig().lr, RunConfig().aux_multiplier)
    for literal in (r"0\.00042\b", r"\b46\.0\b"):
        hits = {str(p.relative_to(REPO)): len(re.findall(literal, p.read_text())) for p in SOURCES}
        hits = {k: v for k, v in hits.items() if v}
        assert hits == {"ssvae/config.py": 1}, (literal, hits)
