"""Process set-up: the collector's threshold, and aiokafka's messages rate-limited."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ledger.adapters.process import GC_THRESHOLD, GcPauses, RateLimited, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_the_young_generation_waits_for_a_million_objects(
    restore_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGER_GC_THRESHOLD", raising=False)
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0


def test_zero_keeps_cpythons_default(restore_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_GC_THRESHOLD", "0")
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (700, 10, 10)


def record(name: str, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)


def test_each_aiokafka_message_passes_once_a_minute_and_ours_always() -> None:
    limit = RateLimited(every_s=60)
    connect = [limit.filter(record("aiokafka", "Unable connect to %s")) for _ in range(1000)]
    assert connect.count(True) == 1
    assert limit.filter(record("aiokafka.consumer.fetcher", "Failed fetch messages from %s"))
    ours = [limit.filter(record("ledger.worker", "the broker does not answer")) for _ in range(5)]
    assert all(ours)
    limit.every_s = 0  # a minute later
    assert limit.filter(record("aiokafka", "Unable connect to %s"))


def test_the_api_process_hands_the_gil_to_its_event_loop_every_half_millisecond() -> None:
    """In a process of its own: the interval is process-wide."""
    probe = (
        "import sys; from ledger.api.app import configure_api_process; "
        "configure_api_process(); print(sys.getswitchinterval())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert float(out.stdout) == pytest.approx(0.0005)


def test_every_collection_is_timed_and_a_long_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pauses = GcPauses(slow_s=0.0)  # every pause counts as long here
    pauses.role = "projector"
    gc.callbacks.append(pauses)
    try:
        with caplog.at_level(logging.WARNING, logger="ledger.adapters.process"):
            gc.collect()
    finally:
        gc.callbacks.remove(pauses)
    report = pauses.report()
    assert report["generation 2"]["collections"] == 1
    assert report["generation 2"]["longest_ms"] > 0
    assert report["generation 2"]["total_ms"] >= report["generation 2"]["longest_ms"]
    assert report["generation 0"]["collections"] == 0
    assert f"the garbage collector stopped the projector (pid {os.getpid()})" in caplog.text


def test_a_process_writes_its_pauses_at_exit_when_asked(tmp_path: Path) -> None:
    """`LEDGER_GC_REPORT`: each long-running process leaves `<role>-<pid>.json` there."""
    probe = (
        "import gc; from ledger.adapters.process import configure_process; "
        "configure_process(role='projector'); gc.collect(); gc.collect()"
    )
    env = {**os.environ, "LEDGER_GC_REPORT": str(tmp_path)}
    subprocess.run([sys.executable, "-c", probe], env=env, check=True)  # noqa: S603
    (written,) = tmp_path.glob("projector-*.json")
    report = orjson.loads(written.read_bytes())
    assert report["role"] == "projector"
    assert report["generation 2"]["collections"] >= 2
    del env["LEDGER_GC_REPORT"]
    subprocess.run([sys.executable, "-c", probe], env=env, check=True, cwd=tmp_path)  # noqa: S603
    assert len(list(tmp_path.glob("*.json"))) == 1  # not asked: nothing written
