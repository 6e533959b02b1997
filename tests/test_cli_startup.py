"""The command line starts fast: --help of the group and of every command, and `plugins` with only the built-in
plugins, import neither torch nor pandas, scipy or numpy; and Ctrl-C at any moment, imports included, ends in one line with status 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "pandas", "scipy", "numpy")


def test_help_of_every_command_imports_no_heavy_package():
    code = f"""
import sys
from click.testing import CliRunner
from smoothcore.cli import cli
commands = sorted(cli.commands)
assert len(commands) >= 10, commands
for args in [["--help"], *[[c, "--help"] for c in commands]]:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (args, result.output)
    assert "Usage:" in result.output
for args in (["plugins"], ["plugins", "--json"]):  # the built-ins' listing is read, not computed
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "dssn" in result.output, (args, result.output)
loaded = [m for m in {HEAVY!r} if m in sys.modules]
assert not loaded, loaded
print("ok", len(commands))
"""
    env = {**os.environ, "SMOOTHCORE_LOAD_PLUGINS": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_a_known_command_does_not_load_plugins_but_an_unknown_one_does():
    code = """
import sys
from click.testing import CliRunner
from smoothcore.cli import cli
result = CliRunner().invoke(cli, ["nope"])
assert result.exit_code != 0 and "No such command" in result.output, result.output
print("torch" in sys.modules)
"""
    env = {**os.environ, "SMOOTHCORE_LOAD_PLUGINS": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"  # looking for a plugin's command loads the plugins


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_ctrl_c_at_any_moment_ends_in_one_line(delay, tmp_path):
    """certify imports torch and the plugins (about 9 s here) before it finds that the folder is missing."""
    env = {**os.environ, "SMOOTHCORE_LOAD_PLUGINS": ""}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from smoothcore.entry import main; main()",
            "certify",
            str(tmp_path / "none"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # it finished before the signal came: nothing to interrupt
        pytest.skip(f"the command ended within {delay} s")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Interrupted"), err


def test_every_option_of_every_command_has_help():
    import click

    from smoothcore.cli import cli

    missing = [
        f"{name} {param.opts[0]}"
        for name, command in sorted(cli.commands.items())
        for param in command.params
        if isinstance(param, click.Option) and param.name != "help" and not param.help
    ]
    assert not missing, missing


def test_every_default_is_shown_the_same_way_and_conditional_requirements_are_marked():
    """Defaults appear in click's ``[default: ...]`` (a value, or words where it depends on the run), never in the
    help sentence; --sigma says when it is required."""
    import re

    import click

    from smoothcore.cli import cli

    ctx = click.Context(cli)
    in_text, records = [], {}
    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            if not isinstance(param, click.Option) or param.name == "help":
                continue
            if re.search(r"\bdefault\b", param.help or "", re.IGNORECASE) and param.name != "checkpoint":
                in_text.append(f"{name} {param.opts[0]}")
            records[name, param.opts[0]] = param.get_help_record(click.Context(command, parent=ctx))[1]
    assert not in_text, in_text
    assert "[required under a noise, unless --lambda]" in records["train-classifier", "--sigma"]
    assert "[default: the training's]" in records["certify", "--sigma"]
    assert "[default: 0.1]" in records["train-classifier", "--lr"]  # a value, without click's parentheses
    assert "(" not in records["certify", "--dataset"]
