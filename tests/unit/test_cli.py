"""The `ramster` program: one entry point under three names, help for every command, one-line mistakes."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ramster.cli import main as cli_main


def ramster(*args, module="ramster.cli"):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module", ["ramster", "ramster.cli"])
def test_python_m_runs_the_same_program(module):
    r = ramster("--help", module=module)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ramster ")
    for command in cli_main.SUBCOMMANDS:
        assert command in r.stdout


def test_the_installed_entry_point_is_the_dispatcher():
    import tomllib
    from importlib import import_module
    from pathlib import Path

    doc = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    target = doc["project"]["scripts"]["ramster"]
    module, _, func = target.partition(":")
    assert getattr(import_module(module), func) is cli_main.main


@pytest.mark.parametrize("command", list(cli_main.SUBCOMMANDS))
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main.main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ramster {command}")
    # more than a usage line: a description of what the command is for
    assert len(out.splitlines()) > 5


@pytest.mark.parametrize("args,message", [
    (["node", "--memory", "1.5G"], "ramster node: invalid memory '1.5G': expected bytes or a size like"),
    (["node", "--listen", "::1:80"], "ramster node: invalid listen address '::1:80': put IPv6 addresses in brackets"),
    (["node", "--metrics", "unix:/tmp/m"], "ramster node: invalid metrics address 'unix:/tmp/m': expected HOST:PORT"),
    (["bench", "engine", "--repeat", "0"], "ramster bench: --repeat must be at least 1"),
])
def test_a_mistake_is_one_line_and_exit_status_2(args, message):
    r = ramster(*args)
    assert r.returncode == 2
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_an_unknown_command_is_argparses_usage_error():
    r = ramster("nonsense")
    assert r.returncode == 2 and "invalid choice" in r.stderr
