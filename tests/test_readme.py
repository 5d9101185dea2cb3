"""The README's shell commands, run as written: the ones that need no running service."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .conftest import ROOT

# Commands that need the service running, a job id, a file of the reader's own, or every
# core for a minute (tune; tests/test_tune.py runs it briefly).
NEEDS_MORE = re.compile(
    r"^(make (run|test)|curl |\$P (worker|enqueue|status|cancel|dlq|recover|tune)"
    r"|cat payload\.json)"
)


def readme_commands() -> list[str]:
    """Return every command of the README's sh blocks: continuations joined, comments cut."""
    text = (ROOT / "README.md").read_text("utf-8")
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def runnable() -> list[str]:
    """Return the README's commands that run offline, with its variables filled in."""
    commands = readme_commands()
    assignments = [re.match(r"^(\w+)=(\S+)$", command) for command in commands]
    variables = {found[1]: found[2] for found in assignments if found}
    offline = []
    for command in commands:
        if re.match(r"^\w+=\S+$", command) or NEEDS_MORE.match(command):
            continue
        for name, value in variables.items():
            command = command.replace(f"${name}", value)
        offline.append(command)
    return offline


def test_the_readme_has_offline_commands_to_run() -> None:
    """The parsing finds the validate and render commands, or this test would test nothing."""
    found = runnable()
    assert any("validate" in command for command in found)
    assert any(" render " in command for command in found)


@pytest.mark.parametrize("command", runnable())
def test_a_readme_command_runs_as_written(command: str) -> None:
    """Each offline command exits 0, or 1 for the invalid examples, printing no false problem."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("PREVIEW_") and key not in ("REDIS_URL", "DATA_DIR")}
    done = subprocess.run(command, shell=True, cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=120)
    expected = 1 if "payloads/invalid/" in command else 0
    assert done.returncode == expected, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    if expected:
        # One problem per example file, each the one that file was made for.
        files = sorted((ROOT / "payloads" / "invalid").glob("*.json"))
        problems = [line for line in done.stdout.splitlines() if line.strip()]
        assert len(problems) == len(files), done.stdout
