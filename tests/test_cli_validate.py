"""`preview-worker validate` exits 0 valid, 1 invalid, 2 unreadable, in and out of process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from preview_worker.cli import cli

from .conftest import PAYLOADS, ROOT

MINIMAL = str(PAYLOADS / "preview_payload_minimal.json")
FULL = str(PAYLOADS / "preview_payload_full.json")
BAD_TITLE = str(PAYLOADS / "invalid" / "empty-title.json")
NO_STEPS = str(PAYLOADS / "invalid" / "no-steps.json")


def test_valid_files_exit_0(runner: CliRunner) -> None:
    """Given valid files, `validate` exits 0 and prints a valid line for each."""
    result = runner.invoke(cli, ["validate", MINIMAL, FULL])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{MINIMAL}: valid", f"{FULL}: valid"]


def test_invalid_file_exits_1_with_one_line_per_problem(runner: CliRunner) -> None:
    """Given invalid files among valid ones, `validate` exits 1 with a line for each problem."""
    result = runner.invoke(cli, ["validate", MINIMAL, BAD_TITLE, NO_STEPS])
    assert result.exit_code == 1
    assert f"{BAD_TITLE}: /content/title: must not be empty" in result.output.splitlines()
    assert f"{NO_STEPS}: /content/steps: must have at least 1 item" in result.output.splitlines()


def test_missing_file_exits_2_without_traceback(runner: CliRunner, tmp_path: Path) -> None:
    """Given a missing file, `validate` exits 2 with a cannot-read line and no exception."""
    missing = str(tmp_path / "missing.json")
    result = runner.invoke(cli, ["validate", BAD_TITLE, missing])
    assert result.exit_code == 2
    assert f"{missing}: cannot read: No such file or directory" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_json_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    """Given a file that is not JSON, `validate` exits 2 and says so on stderr."""
    broken = tmp_path / "broken.json"
    broken.write_text('{"tutorialId": ', "utf-8")
    result = runner.invoke(cli, ["validate", str(broken)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{broken}: not valid JSON")


def test_oversized_file_is_invalid_without_parsing(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an oversized non-JSON file, `validate` exits 1 on its size, not 2 on its syntax."""
    monkeypatch.setenv("PREVIEW_MAX_BODY_BYTES", "1024")
    big = tmp_path / "big.json"
    big.write_text("[" * 5000, "utf-8")
    result = runner.invoke(cli, ["validate", str(big)])
    assert result.exit_code == 1
    assert "(root): payload is 1025 bytes, over the limit of 1024 bytes" in result.output


def test_standard_input(runner: CliRunner) -> None:
    """Given a valid payload on standard input, `validate -` exits 0."""
    result = runner.invoke(cli, ["validate", "-"], input=Path(MINIMAL).read_text("utf-8"))
    assert result.exit_code == 0
    assert result.output == "-: valid\n"


def test_json_output_is_machine_readable(runner: CliRunner) -> None:
    """With --json, `validate` prints one JSON document with a result for each file."""
    result = runner.invoke(cli, ["validate", "--json", MINIMAL, BAD_TITLE])
    assert result.exit_code == 1
    assert json.loads(result.output) == {
        "valid": False,
        "results": [
            {"file": MINIMAL, "valid": True, "error": None, "problems": [], "moreProblems": 0},
            {
                "file": BAD_TITLE,
                "valid": False,
                "error": None,
                "problems": [{"path": "/content/title", "message": "must not be empty"}],
                "moreProblems": 0,
            },
        ],
    }


def test_no_path_is_a_usage_error(runner: CliRunner) -> None:
    """Given no path, `validate` exits 2 as a usage error."""
    assert runner.invoke(cli, ["validate"]).exit_code == 2


@pytest.mark.parametrize(
    ("paths", "code"), [([MINIMAL], 0), ([BAD_TITLE], 1), (["/nonexistent.json"], 2)]
)
def test_installed_command_exit_codes(paths: list[str], code: int) -> None:
    """The installed preview-worker script exits 0, 1 or 2 by outcome, with no traceback."""
    command = shutil.which("preview-worker", path=os.path.dirname(sys.executable))
    assert command, "the console script is installed next to the interpreter"
    done = subprocess.run([command, "validate", *paths], capture_output=True, text=True)
    assert done.returncode == code
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("paths", "code"), [([FULL], 0), ([NO_STEPS], 1)])
def test_operator_script_wraps_the_command(paths: list[str], code: int) -> None:
    """bin/validate-payload exits with the command's code and prints its per-file lines."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    done = subprocess.run(
        [str(ROOT / "bin" / "validate-payload"), *paths], capture_output=True, text=True, env=env
    )
    assert done.returncode == code
    assert done.stdout.splitlines()[0].startswith(paths[0])


def test_a_file_with_many_problems_lists_the_first_hundred(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Given 5,000 unknown fields, `validate` prints 100 problems and how many more."""
    many = tmp_path / "many.json"
    body = json.loads(Path(MINIMAL).read_text("utf-8"))
    many.write_text(json.dumps({**body, **{f"x{n}": 1 for n in range(5_000)}}), "utf-8")
    printed = runner.invoke(cli, ["validate", str(many)])
    assert printed.exit_code == 1
    lines = printed.output.splitlines()
    assert len(lines) == 101 and lines[-1] == f"{many}: and 4900 more problems"
    document = json.loads(runner.invoke(cli, ["validate", "--json", str(many)]).output)
    assert len(document["results"][0]["problems"]) == 100
    assert document["results"][0]["moreProblems"] == 4_900


def test_version_and_help_list_each_command_once(runner: CliRunner) -> None:
    """--version names the release; --help lists run once, with dev kept as a hidden alias."""
    from importlib.metadata import version

    shown = runner.invoke(cli, ["--version"])
    assert shown.exit_code == 0 and shown.output == f"preview-worker {version('preview-worker')}\n"
    listed = runner.invoke(cli, ["--help"]).output
    commands = [line.split()[0] for line in listed.split("Commands:")[1].splitlines() if line]
    assert "run" in commands and "dev" not in commands
    assert len(commands) == len(set(commands))
    assert runner.invoke(cli, ["dev", "--help"]).exit_code == 0


def test_offline_validation_ignores_settings_it_does_not_use(runner: CliRunner) -> None:
    """Given a bad REDIS_URL, `validate` still validates; a bad body limit still stops it."""
    unrelated = runner.invoke(cli, ["validate", MINIMAL], env={"REDIS_URL": "notaurl"})
    assert unrelated.exit_code == 0 and unrelated.output == f"{MINIMAL}: valid\n"
    limit = runner.invoke(cli, ["validate", MINIMAL], env={"PREVIEW_MAX_BODY_BYTES": "abc"})
    assert limit.exit_code == 2 and "PREVIEW_MAX_BODY_BYTES" in limit.output
    enqueue = runner.invoke(cli, ["enqueue", MINIMAL], env={"REDIS_URL": "notaurl"})
    assert enqueue.exit_code == 2 and "REDIS_URL" in enqueue.output
