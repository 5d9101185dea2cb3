"""`preview-worker tune`: real renders at each concurrency, and the rule that picks one."""

from __future__ import annotations

import json
import multiprocessing
import re
import sys
from multiprocessing.queues import Queue
from typing import Any

import pytest
from click.testing import CliRunner

from preview_worker import tune
from preview_worker.cli import cli
from preview_worker.schema import validate_payload
from preview_worker.tune import Step, recommend

from .conftest import PAYLOADS

ROW = re.compile(r"^\s*(\d+)\s+(\d+\.\d)\s+(\d+)\s+(\d+)\s+(\d+)$")
ADVICE = re.compile(r"^recommended PREVIEW_WORKER_CONCURRENCY=(\d+): (.+)$")


def step(concurrency: int, rate: float, memory_mib: float = 100.0, p95_ms: float = 50.0) -> Step:
    """Return a crafted step: only rate and memory matter to the rule."""
    return Step(concurrency, renders=int(rate * 5), rate=rate, p50_ms=p95_ms / 2,
                p95_ms=p95_ms, memory_mib=memory_mib)


def test_tune_prints_a_row_per_concurrency_and_its_advice(runner: CliRunner) -> None:
    """Given two concurrencies to try, tune renders at each and recommends one of them."""
    result = runner.invoke(cli, ["tune", "--max-concurrency", "2", "--seconds", "0.5"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert tune.HEADER in lines
    rows = [found.groups() for line in lines if (found := ROW.match(line))]
    assert [int(row[0]) for row in rows] == [1, 2]
    for _, rate, p50, p95, memory in rows:
        assert float(rate) > 0
        assert 0 < int(p50) <= int(p95)
        assert int(memory) > 10  # a process that has rendered holds more than 10 MiB
    advice = ADVICE.match(lines[-1])
    assert advice, result.output
    assert 1 <= int(advice[1]) <= 2


def test_tune_json_gives_the_steps_and_the_advice(runner: CliRunner) -> None:
    """Given --json, tune prints one document: each step's figures and the advice."""
    minimal = str(PAYLOADS / "preview_payload_minimal.json")
    result = runner.invoke(cli, ["tune", "--max-concurrency", "1", "--seconds", "0.3",
                                 "--payload", minimal, "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # a busy host's warning goes to stderr
    assert document["payload"] == minimal
    [only] = document["steps"]
    assert only["concurrency"] == 1 and only["renders"] >= 1
    assert only["rendersPerSecond"] > 0 and only["memoryMiB"] > 10
    assert document["recommended"]["concurrency"] == 1


def test_tune_refuses_an_invalid_payload_before_rendering(runner: CliRunner) -> None:
    """Given an invalid payload file, tune exits 1 naming its problem, with no table."""
    bad = str(PAYLOADS / "invalid" / "empty-title.json")
    result = runner.invoke(cli, ["tune", "--payload", bad])
    assert result.exit_code == 1
    assert f"{bad}: /content/title: must not be empty" in result.output
    assert tune.HEADER not in result.output


def test_fresh_payloads_share_no_text_and_stay_valid() -> None:
    """Two marked copies differ from each other in every text the reuse caches key on."""
    payload: dict[str, Any] = json.loads((PAYLOADS / "preview_payload_full.json").read_text())
    one, two = tune.fresh(payload, "#0-1"), tune.fresh(payload, "#0-2")
    assert validate_payload(one) == []
    assert one["dryRun"] is False
    for key in ("title", "summary"):
        assert one["content"][key] != two["content"][key]
    pairs = list(zip(one["content"]["steps"], two["content"]["steps"], strict=True))
    assert any("code" in first for first, _ in pairs)
    for first, second in pairs:
        assert first["title"] != second["title"]
        if "body" in first:
            assert first["body"] != second["body"]
        if "code" in first:
            assert first["code"]["source"] != second["code"]["source"]
            assert first["code"]["language"] == second["code"]["language"]


@pytest.mark.parametrize(
    ("rates", "memory", "available", "expected"),
    [
        # Throughput plateaus at 2 (4 within 5% is noise): the smallest on the plateau.
        ([40, 78, 80, 79], [100, 200, 300, 400], 10_000, 2),
        # The best is the 2nd, but 3 and 4 are within 5% of it: still the smallest, 2.
        ([40, 80, 77, 78], [100, 200, 300, 400], 10_000, 2),
        # Still rising at the largest tried: the largest.
        ([40, 60, 80], [100, 200, 300], 10_000, 3),
        # 3 would need 300 MiB, over 80% of 300: the best of those that fit, 2.
        ([40, 60, 80], [100, 200, 300], 300, 2),
        # No memory figure: throughput alone decides.
        ([40, 60, 80], [100, 200, 30_000], None, 3),
        # Even 1 does not fit: 1, the least there is.
        ([40, 60], [500, 1000], 100, 1),
        # One step: that step.
        ([40], [100], 10_000, 1),
    ],
)
def test_the_rule_picks_the_smallest_near_best_that_fits(
    rates: list[float], memory: list[float], available: float | None, expected: int
) -> None:
    """The smallest concurrency that fits in memory with throughput within 5% of the best."""
    steps = [step(number, rate, mib) for number, (rate, mib)
             in enumerate(zip(rates, memory, strict=True), start=1)]
    assert recommend(steps, available).concurrency == expected


def test_the_reason_names_what_decided() -> None:
    """The reason says the plateau, the added latency, the memory check, or to try more."""
    plateau = recommend([step(1, 40, p95_ms=50), step(2, 78, p95_ms=55),
                         step(3, 80, p95_ms=90)], 10_000).reason
    assert "within 5% of the best (80.0/s at 3)" in plateau
    assert "p95 55 ms at 2, 90 ms at 3" in plateau
    assert "fits in 80% of the 10000 MiB available" in plateau
    rising = recommend([step(1, 40), step(2, 80)], 10_000).reason
    assert "try a higher --max-concurrency" in rising
    too_big = recommend([step(1, 40, 100), step(2, 80, 300)], 300).reason
    assert "2 workers would need 300 MiB, over 80% of the 300 MiB available" in too_big


def test_a_render_process_that_dies_stops_tune_with_its_code() -> None:
    """Given a process that exits 3 without figures, collecting says so instead of waiting."""
    context = multiprocessing.get_context("spawn")
    results: Queue[tune.Worked] = context.Queue()
    process = context.Process(target=sys.exit, args=(3,))
    process.start()
    with pytest.raises(tune.TuneError, match="exited with code 3"):
        tune.collect([process], results)
    process.join()


def test_a_busy_host_is_warned_of() -> None:
    """A load average of 0.5 or more before the run earns a warning; an idle host none."""
    assert tune.busy_warning(0.2) is None
    warning = tune.busy_warning(1.3)
    assert warning and "load average 1.30" in warning


def test_the_rule_needs_a_step() -> None:
    """Nothing measured, nothing to recommend."""
    with pytest.raises(ValueError):
        recommend([], 1000)


def test_percentile_is_nearest_rank() -> None:
    """p50 and p95 of 1..20 are 10 and 19; of one value, that value."""
    values = [float(number) for number in range(20, 0, -1)]
    assert tune.percentile(values, 0.50) == 10
    assert tune.percentile(values, 0.95) == 19
    assert tune.percentile([7.0], 0.95) == 7
