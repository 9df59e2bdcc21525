"""The command line's help: the top-level help names exactly the commands that exist, in plain text (no reST
backticks, no command that is gone), and each command's help answers."""
import re

import pytest

from bench.cli import build_parser


def _commands():
    parser = build_parser()
    return list(next(a for a in parser._actions if a.dest == "command").choices)


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_the_top_level_help_names_exactly_the_commands_that_exist(capsys):
    commands = _commands()
    assert commands == ["train", "run", "list", "report", "compare", "regress"]
    out = _help(capsys)
    assert "`" not in out, "reST backticks in the help"
    for group in re.findall(r"\{([\w,-]+)\}", out):  # argparse's {a,b,...}
        assert set(group.split(",")) <= set(commands), f"the help names {group}; the commands are {commands}"
    described = re.search(r"Commands:(.*?)Bad input", " ".join(out.split()))
    assert described and re.findall(r"(\w+) \(", described.group(1)) == commands
    for command in commands:
        assert _help(capsys, command).startswith(f"usage: python -m bench {command}")
