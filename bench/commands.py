"""The command line's commands: name -> where its parser lives and its one-line help (the one home of both).

``bench.cli`` imports a command's module only when that command runs or its help is asked for; each
module's adder builds its parser with the help written here.
"""
from __future__ import annotations

from typing import Dict, NamedTuple


class Command(NamedTuple):
    module: str
    adder: str
    help: str


COMMANDS: Dict[str, Command] = {
    "train": Command("bench.run.train_cmd", "add_train_parser", "train one configuration and print one JSON line"),
    "run": Command("bench.run.harness", "add_run_parser", "run a grid (a preset plus overrides) into an output folder"),
    "list": Command("bench.run.listing", "add_list_parser", "list estimators and presets"),
    "report": Command("bench.report.cli", "add_report_parser",
                      "write tables, plots, report.md and report.html into a results folder"),
    "compare": Command("bench.report.compare_cli", "add_compare_parser",
                       "compare two results folders cell by cell; exit 1 when a difference exceeds its noise"),
    "search": Command("bench.run.search_cli", "add_search_parser",
                      "tune at the reporting budget: a successive-halving search per variant, on validation accuracy"),
    "tune": Command("bench.report.tune_study", "add_tune_parser",
                    "choose each estimator's options from a tuning run, on validation accuracy: tuned.json"),
    "regress": Command("bench.regress.cli", "add_parser",
                       "step-time regressions: A/B in one job, baseline check, history"),
}
