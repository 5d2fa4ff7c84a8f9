"""`ledger up`: the embedded broker (unless `LEDGER_BROKER` is set) and the worker process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from ledger.broker import EmbeddedBroker
from ledger.config import Settings


@dataclass
class Running:
    bootstrap: str
    worker: subprocess.Popen[bytes]
    broker: EmbeddedBroker | None


def worker_env(settings: Settings, bootstrap: str) -> dict[str, str]:
    env = dict(os.environ)
    env["LEDGER_BROKER"] = bootstrap
    env["LEDGER_TOPIC_PREFIX"] = settings.topic_prefix
    env["LEDGER_DATA_DIR"] = str(settings.data_dir)
    return env


def start_worker(settings: Settings, bootstrap: str) -> subprocess.Popen[bytes]:
    """The workers run in their own process: `python -m workers`."""
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "workers"], env=worker_env(settings, bootstrap)
    )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_ledger(settings: Settings) -> Iterator[Running]:
    """Start broker (if needed) and workers; stop both on exit, workers first."""
    broker = None
    if settings.broker:
        bootstrap = settings.broker
    else:
        broker = EmbeddedBroker(settings.data_dir / "tansu.log").start()
        bootstrap = broker.bootstrap
    try:
        worker = start_worker(settings, bootstrap)
        try:
            yield Running(bootstrap, worker, broker)
        finally:
            stop_process(worker)
    finally:
        if broker is not None:
            broker.stop()
