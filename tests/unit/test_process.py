"""Process set-up: the collector's threshold, and aiokafka's messages rate-limited."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ledger.adapters.process import GC_THRESHOLD, RateLimited, tune_gc


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
