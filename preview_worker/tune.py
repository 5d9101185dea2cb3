"""How many workers this host should run: real renders timed at each concurrency.

`preview-worker tune` starts c processes for c = 1, 2, ... up to twice the cores; each
renders and stores fresh previews in a loop (the path a worker takes, into a temporary
FileStore) for a few seconds after one warm-up render. Every render marks each text of
the payload, so neither the store nor the renderer's reuse caches save any work: the
figures are those of new tutorials, the costliest kind.

The advice is `recommend()`, a pure function of the measured steps:

1. A concurrency fits when the peak resident memory of its processes together is at most
   MEMORY_SHARE of MemAvailable, read before the run: the rest is headroom for the pool's
   leader, RQ, render caches that grow over hours, and whatever else the host runs.
2. Of those that fit, take the best throughput; recommend the smallest concurrency whose
   throughput is within PLATEAU of it. Past that plateau the cores are busy: more workers
   only make each render wait its turn for a core (p95 rises) and cost memory.

Latency is reported, not a gate. A queue's backlog is drained by throughput, and a job's
wait in the queue soon outweighs its render; the smallest concurrency on the plateau is
already the one with the lowest latency at that throughput.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import queue
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from preview_worker.previews import store_preview
from preview_worker.store import FileStore

# The full example payload of a checkout: payloads/ is not part of the installed package.
FULL_PAYLOAD = Path(__file__).resolve().parent.parent / "payloads" / "preview_payload_full.json"
PLATEAU = 0.95  # share of the best throughput that counts as the best: steps vary that much
MEMORY_SHARE = 0.8  # share of MemAvailable the workers' peak memory may take
BUSY_LOAD = 0.5  # 1-minute load average past which other work skews the figures
POLL = 1.0  # seconds between looks at the render processes while waiting for their figures
MIB = 1024 * 1024  # bytes

HEADER = "concurrency  renders/s  p50 ms  p95 ms  memory MiB"


class TuneError(RuntimeError):
    """A render process failed or died, so a step has no figures."""


@dataclass(frozen=True)
class Worked:
    """What one render process did in a step: each render's seconds, over how long, at what peak."""

    latencies: list[float]  # seconds, one per render
    elapsed: float  # seconds from the common start to the end of its last render
    peak_mib: float  # peak resident memory of the process


@dataclass(frozen=True)
class Step:
    """The figures of one concurrency: throughput, latency and memory of its processes."""

    concurrency: int
    renders: int
    rate: float  # renders per second, all processes together
    p50_ms: float
    p95_ms: float
    memory_mib: float  # peak resident memory, the processes' peaks added up

    def as_row(self) -> str:
        """Return the step as a line of the table under HEADER."""
        return (f"{self.concurrency:>11}  {self.rate:>9.1f}  {self.p50_ms:>6.0f}  "
                f"{self.p95_ms:>6.0f}  {self.memory_mib:>10.0f}")

    def as_dict(self) -> dict[str, Any]:
        """Return the step as a JSON object (camelCase)."""
        return {
            "concurrency": self.concurrency,
            "renders": self.renders,
            "rendersPerSecond": round(self.rate, 2),
            "p50Ms": round(self.p50_ms, 1),
            "p95Ms": round(self.p95_ms, 1),
            "memoryMiB": round(self.memory_mib, 1),
        }


@dataclass(frozen=True)
class Advice:
    """The PREVIEW_WORKER_CONCURRENCY to run, and why."""

    concurrency: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Return the advice as a JSON object."""
        return {"concurrency": self.concurrency, "reason": self.reason}


def cores() -> int:
    """Return the CPUs this process may run on (its affinity, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_warning(load: float) -> str | None:
    """Say that the host is busy when its load average before the run is BUSY_LOAD or more."""
    if load < BUSY_LOAD:
        return None
    return (f"warning: load average {load:.2f} before the run: other work shares the cores, "
            "so these figures and the advice are skewed; run it again on an idle host")


def available_mib() -> float | None:
    """Return MemAvailable from /proc/meminfo in MiB, or None where there is no such file."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024  # the file counts kB
    except OSError:
        pass
    return None


def peak_mib() -> float:
    """Return this process's peak resident memory in MiB."""
    # VmHWM starts afresh at exec; getrusage would also count the parent's memory, which a
    # spawned child carried between fork and exec.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, else KiB
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def fresh(payload: dict[str, Any], tag: str) -> dict[str, Any]:
    """Return the payload with each title, summary, body and code marked by tag, stored for real.

    A distinct title alone would leave every step's Markdown and code to the reuse caches.
    """
    content = payload["content"]
    marked = {**content, "title": f"{content['title']} {tag}",
              "steps": [fresh_step(step, tag) for step in content["steps"]]}
    if "summary" in content:
        marked["summary"] = f"{content['summary']} {tag}"
    return {**payload, "content": marked, "dryRun": False}


def fresh_step(step: dict[str, Any], tag: str) -> dict[str, Any]:
    """Return a step with its title, body and code marked by tag."""
    marked = {**step, "title": f"{step['title']} {tag}"}
    if "body" in step:
        marked["body"] = f"{step['body']}\n\n{tag}"
    if "code" in step:
        source = step["code"]["source"]
        marked["code"] = {**step["code"], "source": f"{source.rstrip(chr(10))}\n{tag}\n"}
    return marked


def render_for(
    worker: int,
    payload: dict[str, Any],
    data_dir: str,
    seconds: float,
    start: Barrier,
    results: Queue[Worked],
) -> None:
    """Render fresh previews into the store for seconds after the common start; put the figures."""
    store = FileStore(Path(data_dir))
    store_preview(store, fresh(payload, f"#{worker}-0"))  # warm-up: fonts, lexers, parsers
    start.wait()
    latencies: list[float] = []
    began = time.perf_counter()
    for number in itertools.count(1):
        marked = fresh(payload, f"#{worker}-{number}")
        tick = time.perf_counter()
        store_preview(store, marked)
        done = time.perf_counter()
        latencies.append(done - tick)
        if done - began >= seconds:
            break
    results.put(Worked(latencies, done - began, peak_mib()))


def collect(processes: list[BaseProcess], results: Queue[Worked]) -> list[Worked]:
    """Wait for every process's figures; raise TuneError when one dies without giving them."""
    worked: list[Worked] = []
    while len(worked) < len(processes):
        try:
            worked.append(results.get(timeout=POLL))
        except queue.Empty:
            codes = [process.exitcode for process in processes]
            failed = [code for code in codes if code not in (None, 0)]
            if failed or None not in codes:
                code = failed[0] if failed else 0
                raise TuneError(f"a render process exited with code {code} before giving"
                                " its figures; its error is above") from None
    return worked


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of values: the smallest one at or above fraction."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def step_of(concurrency: int, worked: list[Worked]) -> Step:
    """Return the figures of a step from what each of its processes did."""
    latencies = [seconds for each in worked for seconds in each.latencies]
    # All processes started together; the last to finish bounds the window.
    rate = len(latencies) / max(each.elapsed for each in worked)
    return Step(
        concurrency=concurrency,
        renders=len(latencies),
        rate=rate,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p95_ms=percentile(latencies, 0.95) * 1000,
        memory_mib=sum(each.peak_mib for each in worked),
    )


def measure(payload: dict[str, Any], concurrency: int, seconds: float) -> Step:
    """Run concurrency spawned render processes together for seconds; return their figures."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads
    with tempfile.TemporaryDirectory(prefix="preview-tune-") as data_dir:
        start = context.Barrier(concurrency)
        results: Queue[Worked] = context.Queue()
        processes: list[BaseProcess] = [
            context.Process(target=render_for, daemon=True,
                            args=(worker, payload, data_dir, seconds, start, results))
            for worker in range(concurrency)
        ]
        for process in processes:
            process.start()
        try:
            worked = collect(processes, results)
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
                process.join()
            results.close()
    return step_of(concurrency, worked)


def sweep(payload: dict[str, Any], top: int, seconds: float) -> Iterator[Step]:
    """Measure each concurrency from 1 to top in turn, yielding each step as it ends."""
    for concurrency in range(1, top + 1):
        yield measure(payload, concurrency, seconds)


def recommend(steps: Sequence[Step], available: float | None) -> Advice:
    """Return the smallest concurrency that fits in memory with throughput near the best.

    available is MemAvailable in MiB, or None to skip the memory check.
    """
    if not steps:
        raise ValueError("no steps measured")
    steps = sorted(steps, key=lambda step: step.concurrency)
    limit = None if available is None else MEMORY_SHARE * available
    fitting = [step for step in steps if limit is None or step.memory_mib <= limit]
    if not fitting:
        smallest = steps[0]
        return Advice(1, f"{workers(smallest.concurrency)} peaked at {smallest.memory_mib:.0f} MiB,"
                         f" over {MEMORY_SHARE:.0%} of the {available:.0f} MiB available:"
                         " run 1 and give this host more memory")
    best = max(fitting, key=lambda step: step.rate)
    chosen = next(step for step in fitting if step.rate >= PLATEAU * best.rate)
    return Advice(chosen.concurrency, "; ".join(
        [throughput_reason(chosen, best, fitting, steps), memory_reason(chosen, steps, available)]
    ))


def workers(count: int) -> str:
    """Return "1 worker" or "n workers"."""
    return f"{count} worker{'' if count == 1 else 's'}"


def throughput_reason(
    chosen: Step, best: Step, fitting: list[Step], steps: list[Step]
) -> str:
    """Say why the chosen step's throughput is enough, and what more workers would bring."""
    said = f"{workers(chosen.concurrency)} rendered {chosen.rate:.1f}/s, "
    if chosen is best:
        said += "the most of any concurrency tried"
    else:
        said += (f"within {1 - PLATEAU:.0%} of the best "
                 f"({best.rate:.1f}/s at {best.concurrency})")
    largest = fitting[-1]
    if largest is not chosen:
        said += (f"; more workers add latency, not throughput (p95 {chosen.p95_ms:.0f} ms at "
                 f"{chosen.concurrency}, {largest.p95_ms:.0f} ms at {largest.concurrency})")
    elif chosen is steps[-1] and len(steps) > 1:
        said += "; throughput still rose at the largest tried: try a higher --max-concurrency"
    return said


def memory_reason(chosen: Step, steps: list[Step], available: float | None) -> str:
    """Say how the chosen step's memory compares with what the host has available."""
    if available is None:
        return "memory not checked: no MemAvailable in /proc/meminfo"
    share = f"{MEMORY_SHARE:.0%} of the {available:.0f} MiB available"
    over = [step for step in steps if step.memory_mib > MEMORY_SHARE * available]
    if over:
        return (f"{workers(over[0].concurrency)} would need {over[0].memory_mib:.0f} MiB, "
                f"over {share}")
    return f"its {chosen.memory_mib:.0f} MiB fits in {share}"
