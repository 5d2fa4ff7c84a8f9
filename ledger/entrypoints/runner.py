"""`ledger up`: the embedded broker (unless `LEDGER_BROKER` is set), the workers and the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ledger.adapters.broker import BrokerError, EmbeddedBroker
from ledger.adapters.config import Settings
from ledger.adapters.durable import DurableStore, Restored, restore


@dataclass
class Running:
    bootstrap: str
    worker: subprocess.Popen[bytes]  # the validator (LEDGER_WORKER_ROLE=validator)
    api: subprocess.Popen[bytes]
    broker: EmbeddedBroker | None
    logs: list[Path] = field(default_factory=list)
    restored: Restored | None = None  # what the durable copy gave back at the start
    mirror: subprocess.Popen[bytes] | None = None  # keeps the durable copy
    sql: subprocess.Popen[bytes] | None = None  # the SQL projection's writer
    projector: subprocess.Popen[bytes] | None = None  # LEDGER_WORKER_ROLE=projector

    def all_alive(self) -> bool:
        """Whether every process of the ledger still runs."""
        processes = [self.worker, self.api]
        processes += [p for p in (self.mirror, self.sql, self.projector) if p is not None]
        broker_up = self.broker is None or self.broker.running()
        return broker_up and all(p.poll() is None for p in processes)


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
        LEDGER_EMBEDDED_PORT=str(settings.embedded_port),
        LEDGER_MIRROR_INTERVAL_S=str(settings.mirror_interval_s),
        LEDGER_REPLICATION_FACTOR=str(settings.replication_factor),
        LEDGER_SQL_INTERVAL_S=str(settings.sql_interval_s),
        LEDGER_WORKER_ROLE=settings.worker_role,
        LEDGER_SQL_CACHE_STATES=str(settings.sql_cache_states),
        LEDGER_CACHE_STATES=str(settings.cache_states),
    )
    for name, value in (
        ("LEDGER_CLOCK", settings.clock),
        ("LEDGER_API_TOKEN", settings.api_token),
        ("LEDGER_POLICY_FILE", settings.policy_file),
        ("LEDGER_TEMPLATES_DIR", settings.templates_dir),
        ("LEDGER_MIN_INSYNC_REPLICAS", settings.min_insync_replicas),
        ("LEDGER_SQL_URL", settings.sql_url),
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
    """The stream workers (validator and projector, or the one `settings.worker_role`
    names): `python -m workers`."""
    return start_module("workers", settings, bootstrap, log)


def start_stages(
    settings: Settings, bootstrap: str, logs: tuple[Path | None, Path | None] = (None, None)
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """The validator and the projector, each in its own process (a core each)."""
    validator = start_worker(settings.model_copy(update={"worker_role": "validator"}), bootstrap,
                             logs[0])  # fmt: skip
    projector = start_worker(settings.model_copy(update={"worker_role": "projector"}), bootstrap,
                             logs[1])  # fmt: skip
    return validator, projector


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


PIDS_FILE = "running.json"
STOP_ORDER = (
    "api",
    "sql",
    "worker",
    "projector",
    "mirror",
    "broker",
)  # readers and writers first, broker last


def _alive(pid: int, marker: str) -> bool:
    """Whether `pid` runs and its command line holds `marker` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


MARKERS = {
    "runner": "ledger",
    "api": "ledger.api",
    "worker": "-m workers",
    "projector": "-m workers",
    "mirror": "workers.mirror",
    "sql": "workers.sql",
    "broker": "broker",
}


def stop_stale(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Stop what an earlier `ledger up` on `data_dir` left running (it was SIGKILLed: its
    workers, API, mirror and broker live on), in the order of a graceful stop, so the
    mirror's last sync saves what the old broker holds. Refuses if that `ledger up` is
    itself still running. Returns the names stopped."""
    data_dir = settings.data_dir
    path = data_dir / PIDS_FILE
    try:
        pids: dict[str, int] = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    runner = pids.get("runner")
    if runner and runner != os.getpid() and _alive(runner, MARKERS["runner"]):
        raise BrokerError(f"a ledger is already running on {data_dir} (pid {runner})")
    stopped = []
    for name in STOP_ORDER:
        pid = pids.get(name)
        if not pid or not _alive(pid, MARKERS[name]):
            continue
        if name == "broker":
            _last_sync(settings)  # whatever the old broker holds that the copy lacks
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid, MARKERS[name]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid, MARKERS[name]):
            os.kill(pid, signal.SIGKILL)
        stopped.append(name)
    path.unlink(missing_ok=True)
    return stopped


def _last_sync(settings: Settings) -> None:
    from workers.mirror import Mirror

    store = DurableStore.in_dir(settings.data_dir)
    bootstrap = store.get_meta("bootstrap")

    async def sync() -> None:
        if bootstrap is None:
            return
        mirror = await Mirror(settings, bootstrap, store).start()
        try:
            await asyncio.wait_for(mirror.sync(), 60)
        finally:
            await mirror.stop()

    try:
        asyncio.run(sync())
    except Exception as exc:  # noqa: BLE001 - the copy stays as the mirror left it
        print(f"ledger up: could not sync from the old broker: {exc!r}", file=sys.stderr)
    finally:
        store.close()


def _write_pids(data_dir: Path, pids: dict[str, int]) -> None:
    tmp = data_dir / (PIDS_FILE + ".tmp")
    tmp.write_text(json.dumps(pids))
    tmp.replace(data_dir / PIDS_FILE)


@contextlib.contextmanager
def running_ledger(settings: Settings, quiet: bool = False) -> Iterator[Running]:
    """Start broker (if needed), workers and API; stop them on exit, broker last.

    The embedded broker on a fixed port (`LEDGER_EMBEDDED_PORT`, not 0) is durable: it is
    restored from the copy under the data directory before anything else starts, and a
    mirror process keeps that copy. With `quiet`, the processes' output goes to log
    files under the data directory.
    """
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    names = ("worker", "projector", "api", "mirror", "sql")
    log_of = {n: data_dir / f"{n}.log" if quiet else None for n in names}
    with contextlib.ExitStack() as stack:
        broker = None
        restored = None
        mirror = None

        def grace() -> float:
            # with the broker gone nothing can finish cleanly: do not wait 30 s for it
            return 30.0 if broker is None or broker.running() else 5.0

        pids = {"runner": os.getpid()}
        if settings.broker:
            bootstrap = settings.broker
        else:
            durable = settings.embedded_port != 0
            if durable:
                stop_stale(settings)
            broker = EmbeddedBroker(data_dir / "tansu.log", port=settings.embedded_port or None)
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
            pids["broker"] = broker.pid
            if durable:
                store = DurableStore.in_dir(data_dir)
                try:
                    restored = asyncio.run(restore(settings, bootstrap, store))
                    store.set_meta("bootstrap", bootstrap)
                finally:
                    store.close()
                mirror = start_module("workers.mirror", settings, bootstrap, log_of["mirror"])
                stack.callback(lambda: stop_process(mirror, grace()))
                pids["mirror"] = mirror.pid
        worker, projector = start_stages(
            settings, bootstrap, (log_of["worker"], log_of["projector"])
        )
        stack.callback(lambda: stop_process(worker, grace()))
        stack.callback(lambda: stop_process(projector, grace()))
        api = start_api(settings, bootstrap, log_of["api"])
        stack.callback(lambda: stop_process(api, grace()))
        sql = start_module("workers.sql", settings, bootstrap, log_of["sql"])
        stack.callback(lambda: stop_process(sql, grace()))
        pids.update(worker=worker.pid, projector=projector.pid, api=api.pid, sql=sql.pid)
        _write_pids(data_dir, pids)
        stack.callback((data_dir / PIDS_FILE).unlink, missing_ok=True)
        logs = [p for p in log_of.values() if p is not None]
        yield Running(bootstrap, worker, api, broker, logs, restored, mirror, sql, projector)
