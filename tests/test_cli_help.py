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
    assert commands == ["train", "run", "list", "report", "compare", "search", "tune", "regress"]
    out = _help(capsys)
    assert "`" not in out, "reST backticks in the help"
    for group in re.findall(r"\{([\w,-]+)\}", out):  # argparse's {a,b,...}
        assert set(group.split(",")) <= set(commands), f"the help names {group}; the commands are {commands}"
    described = re.search(r"Commands:(.*?)Bad input", " ".join(out.split()))
    assert described and re.findall(r"(\w+) \(", described.group(1)) == commands
    for command in commands:
        assert _help(capsys, command).startswith(f"usage: python -m bench {command}")


def test_the_top_level_help_imports_no_torch_and_each_command_parses_alone():
    """The CLI loads a command's module only when that command runs (bench.commands): `--help` must not
    import torch or Pyro (that is what made it take seconds), and each command, built alone, parses."""
    import subprocess
    import sys

    code = ("import sys\nfrom bench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'pyro', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:] + out.stderr[-500:]
    from bench.cli import build_parser
    from bench.commands import COMMANDS

    for name, command in COMMANDS.items():
        parser = build_parser(load=[name])
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        assert sub.description is None or isinstance(sub.description, str)
        assert any(a.dest == "help" for a in sub._actions)
        top = next(a for a in parser._actions if a.dest == "command")
        assert next(c.help for c in top._choices_actions if c.dest == name) == command.help
