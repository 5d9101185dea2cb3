"""The preview-worker command line: one face over the same core as the HTTP API."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from preview_worker.schema import (
    PayloadNotJSON,
    PayloadTooLarge,
    Problem,
    parse_payload,
    validate_payload,
)
from preview_worker.settings import Settings, SettingsError, load_settings

EXIT_INVALID = 1  # some payload broke a rule of the schema
EXIT_UNREADABLE = 2  # a file could not be read or parsed, or the settings are bad


class ConfigError(click.ClickException):
    """The environment holds a setting the service cannot use."""

    exit_code = EXIT_UNREADABLE


@dataclass
class PayloadFile:
    """What became of one payload file: its payload, its problems or why it could not be read."""

    name: str
    payload: Any = None
    problems: list[Problem] = field(default_factory=list)
    error: str | None = None

    @property
    def valid(self) -> bool:
        """Whether the file was read and its payload broke no rule."""
        return self.error is None and not self.problems

    def as_dict(self) -> dict[str, Any]:
        """Return the machine-readable result of this file."""
        return {
            "file": self.name,
            "valid": self.valid,
            "error": self.error,
            "problems": [problem.as_dict() for problem in self.problems],
        }


def read_payload_file(name: str, settings: Settings) -> PayloadFile:
    """Read, parse and validate one payload file, or standard input for '-'."""
    try:
        if name == "-":
            body = sys.stdin.buffer.read()
        else:
            with open(name, "rb") as stream:
                body = stream.read(settings.max_body_bytes + 1)
    except OSError as error:
        return PayloadFile(name, error=f"cannot read: {error.strerror or error}")
    try:
        payload = parse_payload(body, settings.max_body_bytes)
    except PayloadTooLarge as error:
        return PayloadFile(name, problems=[Problem("", str(error))])
    except PayloadNotJSON as error:
        return PayloadFile(name, error=str(error))
    return PayloadFile(name, payload=payload, problems=validate_payload(payload))


def exit_code_of(results: list[PayloadFile]) -> int:
    """Return 2 when any file was unreadable, 1 when any was invalid, else 0."""
    if any(result.error for result in results):
        return EXIT_UNREADABLE
    if any(result.problems for result in results):
        return EXIT_INVALID
    return 0


def print_results(results: list[PayloadFile]) -> None:
    """Print each file's verdict for people: one line per problem."""
    for result in results:
        if result.error:
            click.echo(f"{result.name}: {result.error}", err=True)
        for problem in result.problems:
            click.echo(f"{result.name}: {problem.path or '(root)'}: {problem.message}")
        if result.valid:
            click.echo(f"{result.name}: valid")


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Render tutorial previews in the background: validate, enqueue, work, watch."""
    try:
        ctx.obj = load_settings()
    except SettingsError as error:
        raise ConfigError(str(error)) from None


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_obj
def validate(settings: Settings, paths: tuple[str, ...], as_json: bool) -> None:
    """Validate payload files (or '-' for standard input) against the schema.

    Exits 0 when all are valid, 1 when any is invalid, 2 when any cannot be read.
    """
    results = [read_payload_file(path, settings) for path in paths]
    if as_json:
        document = {
            "valid": all(result.valid for result in results),
            "results": [result.as_dict() for result in results],
        }
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print_results(results)
    sys.exit(exit_code_of(results))


def main() -> None:
    """Run the command line."""
    cli(prog_name="preview-worker")
