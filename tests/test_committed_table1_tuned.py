"""Issue 25: the README's 100-label block quotes results/reference/table1-tuned-cpu, so the committed folder must be
the reference the issue asked for: the whole grid finished (every cell and probe of the preset), on seeds the search
did not choose on, each estimator at the search's choice value for value, and enum + aux, which the choice file
leaves out (its search stopped short: docs/study-100-labels.md), at the preset's values (Pyro's setting)."""
import json
from pathlib import Path

import pandas as pd

from bench.run.grid import load_preset

RESULTS = Path(__file__).resolve().parents[1] / "results"
FOLDER = RESULTS / "reference" / "table1-tuned-cpu"


def _chosen_value(config: dict, field: str):
    return config[field] if field in config else config["options"][field]


def test_the_tuned_100_label_reference_is_the_whole_grid_at_the_search_choices():
    preset = load_preset("table1-tuned")
    tuned = json.loads((RESULTS / "search-table1-cpu" / "tuned.json").read_text())
    env = json.loads((FOLDER / "env.json").read_text())
    runs = pd.read_csv(FOLDER / "runs.csv")

    assert "--tuned results/search-table1-cpu/tuned.json" in env["command"] and "--only" not in env["command"]
    assert env["tuned"]["chosen"] == tuned["settings"]
    assert sorted(runs["cell"]) == sorted(env["expected_cells"]) and (runs["status"] == "ok").all()
    probes = {p.stem for p in (FOLDER / "probes").glob("*.json")}
    assert set(env["expected_probes"]) <= probes
    assert sorted(set(runs["seed"])) == preset["seeds"] and not set(runs["seed"]) & set(tuned["source"]["seeds"])
    assert set(runs["estimator"]) == set(preset["estimators"]) | {"baseline"}

    for path in (FOLDER / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        config = record["config"]
        variant = f"{config['estimator']}{'+aux' if config['aux'] else ''}_L{config['labels']}"
        if config["estimator"] == "baseline":
            continue
        choice = tuned["settings"].get(variant, {"lr": preset["lr"], "aux_multiplier": preset["aux_multiplier"]})
        for field, value in choice.items():
            assert _chosen_value(config, field) == value, (path.name, field)
        assert config["epochs"] == preset["epochs"] and config["patience"] == preset["patience"], path.name
