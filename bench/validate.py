"""Validations per second: the compiled validator against jsonschema.validate() per payload."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema

from preview_worker import validate_payload
from preview_worker.schema import load_schema

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
DURATION = 2.0  # seconds each measurement runs


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


def main() -> None:
    """Print validations per second for each example payload and both ways of validating."""
    print(f"{'payload':<10} {'compiled/s':>12} {'validate()/s':>13} {'speed-up':>9}")
    for name in ("minimal", "full"):
        payload = json.loads((PAYLOADS / f"preview_payload_{name}.json").read_text("utf-8"))
        compiled = rate(validate_payload, payload)
        uncompiled = rate(validate_uncompiled, payload)
        print(f"{name:<10} {compiled:>12,.0f} {uncompiled:>13,.0f} {compiled / uncompiled:>8.1f}x")


if __name__ == "__main__":
    main()
