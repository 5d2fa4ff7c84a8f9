"""`ledger up`: the embedded broker (unless `LEDGER_BROKER` is set), the workers and the API."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ledger.adapters.broker import EmbeddedBroker
from ledger.adapters.config import Settings


@dataclass
class Running:
    bootstrap: str
    worker: subprocess.Popen[bytes]
    api: subprocess.Popen[bytes]
    broker: EmbeddedBroker | None
    logs: list[Path] = field(default_factory=list)


def worker_env(settings: Settings, bootstrap: str) -> dict[str, str]:
    """The environment of a worker process: ours, with the settings made explicit."""
    env = dict(os.environ)
    env.update(
        LEDGER_BROKER=bootstrap,
        LEDGER_TOPIC_PREFIX=settings.topic_prefix,
        LEDGER_DATA_DIR=str(settings.data_dir),
        LEDGER_SESSION_TIMEOUT_S=str(settings.session_timeout_s),
        LEDGER_PARTITIONS=str(settings.partitions),
        LEDGER_API_HOST=settings.api_host,
        LEDGER_API_PORT=str(settings.api_port),
        LEDGER_OVERDUE_DAYS=str(settings.overdue_days),
        LEDGER_OVERDUE_UNIT=settings.overdue_unit,
        LEDGER_STORE=settings.store,
        LEDGER_ALERT_INTERVAL=str(settings.alert_interval),
        LEDGER_ALERT_WEBHOOKS=settings.alert_webhooks,
        LEDGER_ALERT_RETRY_BASE_S=str(settings.alert_retry_base_s),
        LEDGER_ALERT_RETRY_CAP_S=str(settings.alert_retry_cap_s),
        LEDGER_ALERT_TIMEOUT_S=str(settings.alert_timeout_s),
        LEDGER_STALL_AFTER_S=str(settings.stall_after_s),
        LEDGER_REORDER_GRACE_S=str(settings.reorder_grace_s),
    )
    for name, value in (
        ("LEDGER_CLOCK", settings.clock),
        ("LEDGER_API_TOKEN", settings.api_token),
        ("LEDGER_POLICY_FILE", settings.policy_file),
    ):
        if value is not None:
            env[name] = str(value)
    return env


def start_module(
    module: str, settings: Settings, bootstrap: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`python -m <module>` with the ledger's settings; output to `log` if given."""
    out = log.open("ab") if log is not None else None
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", module],
        env=worker_env(settings, bootstrap),
        stdout=out,
        stderr=subprocess.STDOUT if out is not None else None,
    )


def start_worker(
    settings: Settings, bootstrap: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """The stream workers (validator and projector): `python -m workers`."""
    return start_module("workers", settings, bootstrap, log)


def start_api(
    settings: Settings, bootstrap: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """The query API: `python -m ledger.api`."""
    return start_module("ledger.api", settings, bootstrap, log)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_ledger(settings: Settings, quiet: bool = False) -> Iterator[Running]:
    """Start broker (if needed), workers and API; stop them on exit, broker last.

    With `quiet`, the processes' output goes to log files under the data directory.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    broker = None
    if settings.broker:
        bootstrap = settings.broker
    else:
        broker = EmbeddedBroker(settings.data_dir / "tansu.log").start()
        bootstrap = broker.bootstrap
    worker_log = settings.data_dir / "worker.log" if quiet else None
    api_log = settings.data_dir / "api.log" if quiet else None
    try:
        worker = start_worker(settings, bootstrap, worker_log)
        try:
            api = start_api(settings, bootstrap, api_log)
            try:
                logs = [p for p in (worker_log, api_log) if p is not None]
                yield Running(bootstrap, worker, api, broker, logs)
            finally:
                stop_process(api)
        finally:
            stop_process(worker)
    finally:
        if broker is not None:
            broker.stop()
