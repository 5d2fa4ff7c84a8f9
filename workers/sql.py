"""The SQL writer: `ledger.events`, `ledger.rejected`, `ledger.alerts` and
`ledger.alert-deliveries` into the SQL tables (`projections.tables`), exactly once.

Its input offsets live in the SQL store, written in the same transaction as the rows
(`ledger.adapters.sql`), so a SIGKILL at any point neither loses nor doubles a row: it
resumes from the offsets stored with the rows. After each write it also commits them to
its consumer group (`ledger-sql`), for `/health` to show its lag; the store's copy is the
one that counts.

A request's row is refolded from its events with the same folds as the API
(`projections.state`): the states of recently touched subjects are kept in memory
(`LEDGER_SQL_CACHE_STATES`), the others are refolded from the `events` table.

On start, the writer checks that the stored offsets belong to this log (the event
stored from the last position it read is the one the log holds there); if not (a new
broker, a reset ledger), it rebuilds the tables from the log.

`python -m workers.sql` (started by `ledger up` and `ledger demo`); `ledger sql --rebuild`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from events import InvalidEvent, decode_recorded
from ledger.adapters.config import Settings
from ledger.adapters.kafka import ensure_ledger_topics, stop_consumer
from ledger.adapters.process import configure_process
from ledger.adapters.sql import (
    Changes,
    Offsets,
    SqlStore,
    StaleOffsets,
    open_store,
    unavailable_errors,
)  # fmt: skip
from ledger.adapters.topics import Topics
from ledger.rules.policy import Policy, load_policy
from projections.state import CustomerState, RequestState, apply_customer, apply_request
from projections.tables import (
    ALERTS,
    CUSTOMERS,
    DECISIONS,
    DELIVERIES,
    ESCALATIONS,
    EVENTS,
    REJECTIONS,
    REQUESTS,
    alert_row,
    customer_row,
    delivery_row,
    escalation_row,
    event_row,
    rejection_row,
    request_rows,
)  # fmt: skip
from workers.failpoints import failpoint
from workers.runtime import group_id

log = logging.getLogger("ledger.sql")
MAX_RECORDS = 20_000  # per transaction


class SqlWriter:
    def __init__(self, settings: Settings, bootstrap: str, store: SqlStore) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.store = store
        self.topics = Topics(settings.topic_prefix)
        self.inputs = [
            self.topics.events, self.topics.rejected, self.topics.alerts, self.topics.deliveries,
        ]  # fmt: skip
        self.policy: Policy = load_policy(settings.policy_file)
        self.positions: Offsets = {}
        self.requests: OrderedDict[str, RequestState] = OrderedDict()
        self.customers: OrderedDict[str, CustomerState] = OrderedDict()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id(settings.topic_prefix, "sql"),
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **settings.kafka_client_options(),
        )
        self.tps: list[TopicPartition] = []

    async def start(self) -> SqlWriter:
        await ensure_ledger_topics(self.settings, self.bootstrap)
        await self.consumer.start()
        await self.consumer._client.force_metadata_update()  # noqa: SLF001 - fresh topics
        self.tps = [
            TopicPartition(topic, p)
            for topic in self.inputs
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        self.consumer.assign(self.tps)
        await self._resume()
        return self

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await stop_consumer(self.consumer)

    async def _resume(self) -> None:
        """Seek to the stored offsets, after checking they are this log's."""
        stored = await asyncio.to_thread(self.store.offsets)
        if stored and not await self._same_log(stored):
            log.warning("the SQL tables are not this log's (a new or reset ledger): rebuilding")
            await asyncio.to_thread(self.store.rebuild)
            stored = {}
        self.positions = stored
        self.requests.clear()
        self.customers.clear()
        for tp in self.tps:
            self.consumer.seek(tp, stored.get((tp.topic, tp.partition), 0))

    async def _same_log(self, stored: Offsets) -> bool:
        if any(topic not in self.inputs for topic, _ in stored):
            return False  # another ledger's topics (another LEDGER_TOPIC_PREFIX)
        ends = await self.consumer.end_offsets(self.tps)
        for tp in self.tps:
            if stored.get((tp.topic, tp.partition), 0) > ends[tp]:
                return False  # the tables hold more than this log
        for tp in self.tps:
            at = stored.get((tp.topic, tp.partition), 0) - 1
            if tp.topic != self.topics.events or at < 0:
                continue
            self.consumer.seek(tp, at)
            got = await self.consumer.getmany(tp, timeout_ms=5000, max_records=1)
            records = got.get(tp, [])
            if not records or records[0].offset != at:
                return False
            try:
                event_id = str(decode_recorded(records[0].value).event_id)
            except InvalidEvent:
                return False
            if await asyncio.to_thread(self.store.event_at, tp.partition, at) != event_id:
                return False
        return True

    # -- one batch ---------------------------------------------------------------------
    async def step(self, timeout_ms: int) -> int:
        """Fetch what is there (waiting up to `timeout_ms`), write it; records written."""
        got = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=MAX_RECORDS)
        records = [(tp, r) for tp, rs in got.items() for r in rs]
        if not records:
            return 0
        offsets = dict(self.positions)
        for tp, rs in got.items():
            if rs:
                offsets[(tp.topic, tp.partition)] = rs[-1].offset + 1
        try:
            await asyncio.to_thread(self._write, records, offsets)
        except StaleOffsets:
            log.warning("the stored offsets moved (a rebuild?): resuming from them")
            await self._resume()
            return 0
        except BaseException:
            self.requests.clear()  # they may hold events that were not written
            self.customers.clear()
            raise
        self.positions = offsets
        await self._commit_group(got)
        return len(records)

    def _write(self, records: list[tuple[TopicPartition, Any]], offsets: Offsets) -> None:
        with self.store.session():
            changes = self.fold(records)
            self.store.write(changes, self.positions, offsets, _before_commit)

    async def _commit_group(self, got: dict[TopicPartition, list[Any]]) -> None:
        """For /health's lag only: the store's offsets are the ones that count."""
        done = {tp: rs[-1].offset + 1 for tp, rs in got.items() if rs}
        with contextlib.suppress(KafkaError, OSError, AssertionError):
            await self.consumer.commit(done)

    def fold(self, records: Iterable[tuple[TopicPartition, Any]]) -> Changes:
        changes = Changes()
        events = []
        for tp, record in records:
            if tp.topic == self.topics.events:
                try:
                    event = decode_recorded(record.value)
                except InvalidEvent:  # only the validator writes it; never stop on it
                    log.error("ledger.events %s@%s is not an event", tp.partition, record.offset)
                    continue
                changes.add(EVENTS, event_row(event, tp.partition, record.offset, record.value))
                events.append(event)
            elif tp.topic == self.topics.rejected:
                changes.add(REJECTIONS, rejection_row(record.value, tp.partition, record.offset))
            elif tp.topic == self.topics.alerts:
                row = alert_row(record.value)
                if row is not None:
                    changes.replace(ALERTS, (row[0],), row)
            elif tp.topic == self.topics.deliveries:
                row = delivery_row(record.value)
                if row is not None:
                    changes.replace(DELIVERIES, (row[0], row[1]), row)
        self._fold_subjects(events, changes)
        return changes

    def _fold_subjects(self, events: list[Any], changes: Changes) -> None:
        request_ids = {e.data.request_id for e in events if e.type != "escalation"}
        customer_ids = {e.data.customer_id for e in events if e.type == "escalation"}
        requests = self._states(self.requests, request_ids, False, apply_request)
        customers = self._states(self.customers, customer_ids, True, apply_customer)
        touched_r: set[str] = set()
        touched_c: set[str] = set()
        for event in events:
            if event.type == "escalation":
                key = event.data.customer_id
                folded_c = apply_customer(customers.get(key), event)
                if folded_c is not None and folded_c is not customers.get(key):
                    customers[key] = folded_c
                    touched_c.add(key)
                    changes.add(ESCALATIONS, escalation_row(event))
                continue
            key = event.data.request_id
            folded_r = apply_request(requests.get(key), event)
            if folded_r is not None and folded_r is not requests.get(key):
                requests[key] = folded_r
                touched_r.add(key)
        days, unit = self.settings.overdue_days, self.settings.overdue_unit
        for key in sorted(touched_r):
            request, decisions = request_rows(requests[key], self.policy, days, unit)
            changes.replace(REQUESTS, (key,), request)
            for row in decisions:
                changes.replace(DECISIONS, (row[0],), row)
        for key in sorted(touched_c):
            changes.replace(CUSTOMERS, (key,), customer_row(customers[key], self.policy))
        self._keep(self.requests, requests)
        self._keep(self.customers, customers)

    def _states(
        self, cache: OrderedDict[str, Any], ids: set[str], escalations: bool, apply: Any
    ) -> dict[str, Any]:
        """The stored states of `ids`: from memory, else refolded from the events table."""
        found = {k: cache[k] for k in ids if k in cache}
        missing = sorted(ids - found.keys())
        if missing:
            for key, payloads in self.store.subject_payloads(missing, escalations).items():
                state = None
                for raw in payloads:
                    state = apply(state, decode_recorded(raw))
                if state is not None:
                    found[key] = state
        return found

    def _keep(self, cache: OrderedDict[str, Any], states: dict[str, Any]) -> None:
        for key, state in states.items():
            cache[key] = state
            cache.move_to_end(key)
        while len(cache) > self.settings.sql_cache_states:
            cache.popitem(last=False)

    async def caught_up(self) -> bool:
        ends = await self.consumer.end_offsets(self.tps)
        return all(
            self.positions.get((tp.topic, tp.partition), 0) >= end for tp, end in ends.items()
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Write batches until `stop`; between batches the store is free for readers."""
        interval_ms = int(self.settings.sql_interval_s * 1000)
        while not stop.is_set():
            written = await self.step(interval_ms)
            if written < MAX_RECORDS and not stop.is_set():
                with contextlib.suppress(TimeoutError):  # let readers in, gather more
                    await asyncio.wait_for(stop.wait(), self.settings.sql_interval_s)


def _before_commit() -> None:
    failpoint("sql-commit")  # crash tests: SIGKILL inside the transaction


async def rebuild(settings: Settings, bootstrap: str, store: SqlStore) -> int:
    """Drop the tables and refold them from the log, to its current end; records read."""
    await asyncio.to_thread(store.rebuild)
    writer = await SqlWriter(settings, bootstrap, store).start()
    total = 0
    try:
        while not await writer.caught_up():
            total += await writer.step(1000)
    finally:
        await writer.stop()
    return total


async def run_writer(settings: Settings, bootstrap: str, stop: asyncio.Event) -> None:
    """Until `stop`. Through a broker outage, or a SQL store that is away (PostgreSQL
    down, DuckDB's file held by a long reader), it waits and starts again from the offsets
    stored with the rows, logging one line when the trouble begins and one when it ends:
    the SQL tables are a projection, and their store never stops the ledger."""
    away: str | None = None
    unavailable = (KafkaError, OSError, *unavailable_errors())
    while not stop.is_set():
        store: SqlStore | None = None
        writer = None
        try:
            store = open_store(settings.sql_url, settings.data_dir)
            writer = await SqlWriter(settings, bootstrap, store).start()
            if away is not None:
                log.warning("the %s answers again; the SQL tables catch up", away)
                away = None
            await writer.run(stop)
        except unavailable as exc:
            what = "broker" if isinstance(exc, KafkaError | OSError) else "SQL store"
            if away is None:
                log.warning("the %s is away (%s); the SQL writer tries again", what, exc)
                away = what
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
        finally:
            if writer is not None:
                await writer.stop()
            if store is not None:
                store.close()


def main() -> None:
    settings = Settings()
    bootstrap = settings.broker
    if not bootstrap:
        raise SystemExit("LEDGER_BROKER is not set: `ledger up` starts a broker and sets it")
    configure_process()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_writer(settings, bootstrap, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
