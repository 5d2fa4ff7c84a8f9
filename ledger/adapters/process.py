"""Set-up of the ledger's long-running processes (workers, API, mirror): logging (warnings
and errors to standard error, aiokafka's per-attempt messages rate-limited) and the cyclic
garbage collector."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

# The young generation's threshold. CPython's default (700 allocations) makes the
# collector run every few records here: each batch allocates thousands of short-lived
# objects, survivors of a batch get promoted and rescanned, and the collector took 41 % of
# the worker's CPU and 60 % of the API's (issue 11). The count is of container objects
# allocated minus freed, so with 1,000,000 a batch's objects are freed by reference
# counting long before a collection runs, which happens about once per million objects
# of new state. Measured (bench/README.md): 2.4-2.5 k -> 3.7-4.1 k events/s end to end,
# peak RSS unchanged. LEDGER_GC_THRESHOLD overrides it (0: CPython's default).
GC_THRESHOLD = 1_000_000

# How long a thread may hold the GIL before another one asks for it (CPython: 5 ms). The
# API walks states for `as_of` and CSV in worker threads while its event loop answers
# /health and pages; with 5 ms every loop wake-up behind a busy walk waits up to 5 ms
# for the GIL. With 0.5 ms (bench.queries, as_of refold in flight, alternated runs):
# /health p50 6 -> 2 ms, the slowest probe 7-10 -> 4-6 ms; the walk itself unchanged
# (3.6-3.9 s). Only the API sets it: the workers run one thread.
API_SWITCH_INTERVAL_S = 0.0005


class RateLimited(logging.Filter):
    """aiokafka logs every failed attempt (thousands of lines a minute during a broker
    outage): let each of its messages through once a minute."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self.last.get(key, -self.every_s) < self.every_s:
            return False
        self.last[key] = now
        return True


# A collection that stops the process this long is logged (a warning): its event loop
# sent no heartbeat and answered no request meanwhile.
SLOW_GC_S = 0.1


class GcPauses:
    """The cyclic collector's pauses in this process (`gc.callbacks`): per generation, how
    many, the longest and their sum; a pause of `SLOW_GC_S` or more is logged. With
    `LEDGER_GC_REPORT` (a directory) the figures are written there at exit, as
    `<role>-<pid>.json` (what `bench.queries` reports)."""

    def __init__(self, slow_s: float = SLOW_GC_S) -> None:
        self.slow_s = slow_s
        self.role = "process"  # named in the warning: several processes share one log
        self.started = 0.0
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.total = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        took = time.perf_counter() - self.started
        generation = info["generation"]
        self.count[generation] += 1
        self.total[generation] += took
        self.longest[generation] = max(self.longest[generation], took)
        if took >= self.slow_s:
            log.warning(
                "the garbage collector stopped the %s (pid %d) for %.0f ms (generation %d, "
                "%d objects freed)", self.role, os.getpid(), took * 1000, generation,
                info.get("collected", 0),
            )  # fmt: skip

    def report(self) -> dict[str, Any]:
        return {
            f"generation {g}": {
                "collections": self.count[g],
                "longest_ms": round(self.longest[g] * 1000, 2),
                "total_ms": round(self.total[g] * 1000, 2),
            }
            for g in range(3)
        }

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.role}-{os.getpid()}.json"
        path.write_bytes(orjson.dumps({"role": self.role, "pid": os.getpid(), **self.report()}))


GC_PAUSES = GcPauses()


def watch_gc(role: str) -> None:
    """Time every collection of this process (`GC_PAUSES`) until it exits (the collection
    of the interpreter's shutdown, after it, is not the stream's); report them at exit
    when `LEDGER_GC_REPORT` names a directory."""
    GC_PAUSES.role = role
    if GC_PAUSES in gc.callbacks:
        return  # watched already: its exit is taken care of
    gc.callbacks.append(GC_PAUSES)
    atexit.register(_unwatch_gc)  # runs after the report (atexit: last in, first out)
    report = os.environ.get("LEDGER_GC_REPORT")
    if report:
        atexit.register(GC_PAUSES.write, Path(report))


def _unwatch_gc() -> None:
    if GC_PAUSES in gc.callbacks:
        gc.callbacks.remove(GC_PAUSES)


def tune_gc() -> None:
    """Fewer young collections, and everything alive after start-up (modules, settings,
    compiled schemas) moved out of the collector's sight."""
    threshold = int(os.environ.get("LEDGER_GC_THRESHOLD", GC_THRESHOLD))
    if threshold > 0:
        _, second, third = gc.get_threshold()
        gc.set_threshold(threshold, second, third)
    gc.freeze()


def configure_process(*, switch_interval_s: float | None = None, role: str = "process") -> None:
    """What every long-running process of the ledger does first; `switch_interval_s` for
    a process whose event loop shares the GIL with worker threads (the API); `role`
    names it in the collector's report (`watch_gc`)."""
    configure_logging()
    tune_gc()
    watch_gc(role)
    if switch_interval_s is not None:
        sys.setswitchinterval(switch_interval_s)


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimited())
