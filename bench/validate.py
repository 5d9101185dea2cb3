"""Validations per second: the compiled validator against jsonschema.validate() per payload.

Then the worst bodies of tests/test_validation_bounds.py: the CPU seconds each takes to
parse and to validate, and with --baseline what jsonschema's own validator took on them
(capped at BASELINE_CAP seconds each: some took hours).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema

from preview_worker import validate_payload
from preview_worker.schema import PayloadNotJSON, _problems_of, load_schema, parse_payload

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the worst bodies are built by the test that checks them

from tests.test_validation_bounds import (  # noqa: E402
    LIMIT,
    WORST_INVALID,
    WORST_PARSED,
    WORST_REFUSED,
    TooSlow,
    cpu_budget,
)

PAYLOADS = ROOT / "payloads"
DURATION = 2.0  # seconds each measurement runs
BASELINE_CAP = 30.0  # CPU seconds jsonschema's own validator gets per worst body


def rate(check: Callable[[Any], object], payload: Any) -> float:
    """Return how many times per second check(payload) runs, over DURATION seconds."""
    check(payload)  # warm up caches before timing
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < DURATION:
        for _ in range(20):
            check(payload)
        count += 20
    return count / elapsed


def validate_uncompiled(payload: Any) -> None:
    """Validate the way a naive caller would: the schema checked and compiled on every call."""
    try:
        jsonschema.validate(payload, load_schema())
    except jsonschema.ValidationError:
        pass


def plain_problems(payload: Any) -> int:
    """Validate as before issue 12, with jsonschema's own validator; return how many problems."""
    errors = jsonschema.Draft202012Validator(load_schema()).iter_errors(payload)
    try:
        return len({problem for error in errors for problem in _problems_of(error)})
    except RecursionError:  # validate_payload's answer: "payload is nested too deeply"
        return 1


def parse(body: bytes) -> Any:
    """Parse a body as the API does, under the default body limit."""
    return parse_payload(body, LIMIT)


def cpu_seconds(work: Callable[[Any], object], argument: Any, cap: float = 60.0) -> str:
    """Return the CPU seconds work(argument) took, or "> cap s" when it was stopped there."""
    try:
        with cpu_budget(cap) as used:
            work(argument)
    except TooSlow:
        return f"> {cap:.0f} s"
    except PayloadNotJSON:
        pass  # a refusal is the answer being timed
    return f"{used[0]:.3f} s"


def worst(baseline: bool) -> None:
    """Print the CPU seconds of parsing and validating each worst body."""
    header = f"{'body':<48} {'bytes':>9} {'parse':>9} {'validate':>9}"
    print("\n" + header + (f" {'jsonschema alone':>17}" if baseline else ""))
    validate_payload({})  # compile the validator before timing
    for name, (body, _) in sorted(WORST_INVALID.items()):
        payload = parse(body)
        line = f"{name:<48} {len(body):>9,} {cpu_seconds(parse, body):>9}"
        line += f" {cpu_seconds(validate_payload, payload):>9}"
        if baseline:
            line += f" {cpu_seconds(plain_problems, payload, BASELINE_CAP):>17}"
        print(line)
    refused = {name: body for name, (body, _) in WORST_REFUSED.items()} | WORST_PARSED
    for name, body in sorted(refused.items()):
        print(f"{name:<48} {len(body):>9,} {cpu_seconds(parse, body):>9}")


def main() -> None:
    """Print validations per second for each example payload and both ways of validating."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", action="store_true", help="time jsonschema alone too")
    arguments = parser.parse_args()
    print(f"{'payload':<10} {'compiled/s':>12} {'validate()/s':>13} {'speed-up':>9}")
    for name in ("minimal", "full"):
        payload = json.loads((PAYLOADS / f"preview_payload_{name}.json").read_text("utf-8"))
        compiled = rate(validate_payload, payload)
        uncompiled = rate(validate_uncompiled, payload)
        print(f"{name:<10} {compiled:>12,.0f} {uncompiled:>13,.0f} {compiled / uncompiled:>8.1f}x")
    worst(arguments.baseline)


if __name__ == "__main__":
    main()
