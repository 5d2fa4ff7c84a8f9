"""The stream runtime: consumer-group batch processors with changelogged state, on aiokafka.

Why not faust's agents: measured here, faust delivers stream events one at a time
(a bare agent tops out at ~4 k events/s on two cores) and, across restarts, its
`take`/`noack_take` batching occasionally skipped an event at a batch boundary, which
lost accepted events (see README, "Why the workers are not faust agents"). This module
keeps the shape faust gives (a processor per topic, tables co-partitioned with it,
changelogs in Kafka) with the guarantees we need:

- a batch is `getmany` output; the handler sees every record of it, in order per
  partition;
- the handler's outputs and table writes are acknowledged (sealed sends) *before* the
  batch's offsets are committed: at-least-once, and every handler is idempotent;
- a newly assigned partition's table state is rebuilt from its changelog partition
  before any of its records is handled; a revoked partition's state is dropped;
- a processor writes outputs and state only while it is a current member of its group
  (`Processor.fence`), so a process paused past its session (its partitions given to
  another) writes nothing for them when it resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from ledger.adapters.config import Settings
from ledger.adapters.kafka import Outgoing, partition_for, send_sealed, stop_consumer
from ledger.adapters.membership import MemberFile, evict, member_id_of

log = logging.getLogger(__name__)
Handler = Callable[[list[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


def changelog_topic(prefix: str, table: str) -> str:
    """The changelog topic of a table (the name faust would give it)."""
    return f"{prefix}ledger-{table}-changelog"


def group_id(prefix: str, processor: str) -> str:
    """The consumer group of a processor."""
    return f"{prefix}ledger-{processor}"


def _json_load(raw: bytes) -> Any:
    return orjson.loads(raw)


def _json_dump(value: Any) -> bytes:
    return orjson.dumps(value)


class Table:
    """A key -> value table for the partitions its processor owns, changelogged.

    Keys are the source topic's keys (raw bytes), so a key's changelog partition is its
    source partition: the table is co-partitioned with its stream. Values are kept as
    objects; `dump` turns one into its changelog bytes and `load` back (JSON by default),
    so a batch neither parses nor validates the state it already holds.
    """

    def __init__(
        self,
        prefix: str,
        name: str,
        partitions: int,
        load: Callable[[bytes], Any] = _json_load,
        dump: Callable[[Any], bytes] = _json_dump,
    ) -> None:
        self.name = name
        self.topic = changelog_topic(prefix, name)
        self.partitions = list(range(partitions))
        self.load = load
        self.dump = dump
        self.data: dict[bytes, Any] = {}
        self.partition_of: dict[bytes, int] = {}

    def partition(self, key: bytes) -> int:
        return partition_for(key, self.partitions)

    def get(self, key: bytes) -> Any:
        return self.data.get(key)

    def owned_keys(self) -> list[tuple[int, bytes]]:
        """(partition, key) of every state held."""
        return [(self.partition_of[k], k) for k in list(self.data)]

    def keys_of(self, partition: int) -> list[bytes]:
        """The keys of the states held for one partition."""
        return [k for p, k in self.owned_keys() if p == partition]

    def owned(self) -> Iterable[tuple[int, bytes, Any]]:
        return [(self.partition_of[k], k, v) for k, v in list(self.data.items())]

    def stored(self, key: bytes) -> bytes | None:
        """A key's value as its changelog holds it (None: not kept as bytes here)."""
        return None

    def kept(self, key: bytes) -> Any:
        """A key's value if it is at hand as objects (None: not, or none), never parsed."""
        return self.data.get(key)

    def changes(
        self, values: Mapping[bytes, Any], encoded: Mapping[bytes, bytes] | None = None
    ) -> list[Outgoing]:
        """The changelog records for `values` (to send, sealed, with the batch's output);
        `encoded`: values whose bytes the caller has made already."""
        dump, made = self.dump, encoded or {}
        return [
            Outgoing(self.topic, key, made.get(key) or dump(value)) for key, value in values.items()
        ]

    def apply(
        self,
        values: Mapping[bytes, Any],
        changes: Sequence[Outgoing] = (),
        acked: Sequence[Any] = (),
    ) -> None:
        """Take `values` into the local state once their changelog records (`changes`)
        are acknowledged (`acked`)."""
        for key, value in values.items():
            self.data[key] = value
            self.partition_of[key] = partition_for(key, self.partitions)

    def drop(self, partitions: set[int]) -> None:
        for key in [k for k, p in self.partition_of.items() if p in partitions]:
            del self.data[key]
            del self.partition_of[key]

    async def recover(self, settings: Settings, bootstrap: str, partitions: set[int]) -> int:
        """Rebuild the given partitions from the changelog; return the records read."""
        if not partitions:
            return 0
        reader = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            **settings.kafka_client_options(),
        )
        await reader.start()
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        try:
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            count = 0

            def take(tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
                nonlocal count
                count += len(records)
                for record in records:
                    if record.key is not None:
                        latest[record.key] = (tp.partition, record.value)

            await read_to_end(reader, ends, {tp for tp in tps if ends[tp] > 0}, take)
            for key, (partition, value) in latest.items():  # only each key's newest
                if value is None:
                    self.data.pop(key, None)
                    self.partition_of.pop(key, None)
                else:
                    self.data[key] = self._recovered(value)
                    self.partition_of[key] = partition
            return count
        finally:
            await stop_consumer(reader)

    def _recovered(self, raw: bytes) -> Any:
        """What the table holds for a value read back from its changelog."""
        return self.load(raw)


class JsonTable(Table):
    """A `Table` that holds each value as its changelog bytes (what `dump` made of it,
    already sent), and only the `cache_states` most recently used also as objects: a
    batch still neither parses nor validates the states it is working on, but a state at
    rest costs its JSON rather than its objects (a request's JSON is ~6x smaller than its
    pydantic objects), and recovery from the changelog parses nothing."""

    def __init__(
        self,
        prefix: str,
        name: str,
        partitions: int,
        load: Callable[[bytes], Any] = _json_load,
        dump: Callable[[Any], bytes] = _json_dump,
        cache_states: int = 20_000,
    ) -> None:
        super().__init__(prefix, name, partitions, load, dump)
        self.cache: OrderedDict[bytes, Any] = OrderedDict()
        self.cache_states = cache_states

    def _remember(self, key: bytes, value: Any) -> None:
        cache = self.cache
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_states:
            cache.popitem(last=False)

    def stored(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def kept(self, key: bytes) -> Any:
        return self.cache.get(key)

    def get(self, key: bytes) -> Any:
        value = self.cache.get(key)
        if value is not None:
            self.cache.move_to_end(key)
            return value
        raw = self.stored(key)
        if raw is None:
            return None
        value = self.load(raw)
        self._remember(key, value)
        return value

    def owned(self) -> Iterable[tuple[int, bytes, Any]]:
        for partition, key in self.owned_keys():
            value = self.cache.get(key)
            yield partition, key, value if value is not None else self.load(self.data[key])

    def apply(
        self,
        values: Mapping[bytes, Any],
        changes: Sequence[Outgoing] = (),
        acked: Sequence[Any] = (),
    ) -> None:
        encoded = {c.key: c.value for c in changes}
        for key, value in values.items():
            raw = encoded.get(key)
            self._put(key, raw if raw is not None else self.dump(value))
            self._remember(key, value)

    def _put(self, key: bytes, raw: bytes) -> None:
        self.data[key] = raw
        self.partition_of[key] = partition_for(key, self.partitions)

    def _forget(self, partitions: set[int]) -> None:
        for key in [k for k in self.cache if self.partition(k) in partitions]:
            del self.cache[key]

    def drop(self, partitions: set[int]) -> None:
        self._forget(partitions)
        super().drop(partitions)

    def _recovered(self, raw: bytes) -> Any:
        return raw  # parsed when first used

    async def recover(self, settings: Settings, bootstrap: str, partitions: set[int]) -> int:
        self._forget(partitions)  # the changelog's newest value wins over any object kept
        return await super().recover(settings, bootstrap, partitions)


class RecoveryFailed(RuntimeError):
    """A processor's tables could not be rebuilt for partitions it was given."""


class Fenced(RuntimeError):
    """This process is no longer (or not yet again) the group's owner of its partitions:
    the group rebalanced while it was paused or slow, and may have given them to another
    process. It writes nothing for the batch at hand, which is left to their owner."""


class StartAfresh(RuntimeError):
    """A send failed after part of a batch's outputs may have been written: redoing the
    batch in place would write them again, so the processors stop and are started
    afresh (tables rebuilt from their changelogs, what was written read back), as after
    a restart. Its cause says why (a broker away: ridden out)."""


class Processor:
    """One consumer group over one topic, handling `getmany` batches."""

    def __init__(
        self,
        name: str,
        topic: str,
        handle: Handler,
        tables: Sequence[Table] = (),
        on_assigned: Callable[[set[int]], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.topic = topic
        self.handle = handle
        self.tables = list(tables)
        self.on_assigned = on_assigned
        self.lock = asyncio.Lock()  # a timer may touch the tables between batches
        self.assigned: set[int] = set()
        self.consumer: AIOKafkaConsumer | None = None
        self.failure: BaseException | None = None  # a recovery on assignment that failed
        # per assigned partition, the offset before which every record has been handled
        # (its committed offset at assignment, then each batch's end once handled)
        self.handled: dict[int, int] = {}
        # partitions the group gave this process whose tables are not rebuilt yet: that is
        # done by `settle`, outside the rebalance listener, where aiokafka sends no
        # heartbeat (a recovery longer than the session would have the process removed
        # from its group while it goes on as the partitions' owner)
        self.pending: set[int] = set()
        # the fences passed (each commits what was handled before it), and whether what
        # was handled since is still to commit: a batch that wrote, after a fence, leaves
        # its own offsets to the next fence, or to the loop once the stream is idle, or to
        # the revocation (one commit per batch, not two)
        self.fences = 0
        self.deferred = False

    async def caught_up(self) -> set[int]:
        """The assigned partitions whose every record has been handled (call under the
        lock). The end offsets are exact because every writer of our topics seals."""
        consumer = self.consumer
        out: set[int] = set()
        if consumer is None:
            return out
        for partition in self.assigned:
            tp = TopicPartition(self.topic, partition)
            end = consumer.highwater(tp)
            with contextlib.suppress(IllegalStateError):
                if end is not None and await consumer.position(tp) >= end:
                    out.add(partition)
        return out

    async def settle(self, settings: Settings, bootstrap: str) -> None:
        """Rebuild the tables of the partitions newly assigned (`pending`) from their
        changelogs and run `on_assigned` for them, under the lock, before any of their
        records is handled. A failure stops the worker (it is started again fresh): the
        stream must not go on against tables missing what their changelogs hold."""
        if not self.pending:
            return
        async with self.lock:
            new = set(self.pending)
            if not new:
                return
            try:
                for table in self.tables:
                    table.drop(new)  # whatever was there is stale: rebuild from the changelog
                    await table.recover(settings, bootstrap, new)
                for partition in new:
                    committed = None
                    if self.consumer is not None:
                        tp = TopicPartition(self.topic, partition)
                        committed = await self.consumer.committed(tp)
                    self.handled[partition] = committed or 0
                self.assigned |= new
                if self.on_assigned is not None:
                    await self.on_assigned(new)
            except Fenced:  # the rebalance under way gives them out again
                self.assigned -= new
                for partition in new:
                    self.handled.pop(partition, None)
                for table in self.tables:
                    table.drop(new)
                raise
            except Exception as exc:
                self.failure = exc
                raise RecoveryFailed(f"{self.name}: recovering its tables failed") from exc
            self.pending -= new

    async def fence(self) -> None:
        """Raise `Fenced` unless this process is still a member of its group's current
        generation (call it under the lock, right before writing outputs or state). It
        commits the offsets already handled (true, so harmless: a batch's own only once
        the batch is written), which the coordinator refuses from a member it removed or
        while the group rebalances. Not in a group (a handler driven directly): nothing
        to check."""
        consumer = self.consumer
        offsets = {
            TopicPartition(self.topic, p): o for p, o in self.handled.items() if p in self.assigned
        }
        if consumer is None or not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            raise Fenced(f"{self.name}: no longer a member of its group's generation") from exc
        self.fences += 1
        # everything handled is committed now: `handled` moves only in a batch, under the
        # lock or in the loop that calls this when idle, never during the commit
        self.deferred = False

    async def commit_deferred(self) -> None:
        """Commit what was handled and left to a next fence (the stream idle, a stop, a
        revocation); refused (a rebalance), it is redone by the owner, idempotently."""
        if self.deferred:
            with contextlib.suppress(Fenced, KafkaError):
                await self.fence()

    async def handle_recovered(
        self, records: list[ConsumerRecord[bytes, bytes]]
    ) -> set[TopicPartition]:
        """Handle the records of a batch whose partitions this process still owns (one
        revoked while the batch waited for the lock is left to its new owner), under the
        lock, unless a recovery of the tables failed. The partitions handled."""
        async with self.lock:
            if self.failure is not None:
                raise RecoveryFailed(f"{self.name}: recovering its tables failed") from (
                    self.failure
                )
            owned = self.assigned
            mine = [r for r in records if r.partition in owned]
            if mine:
                await self.handle(mine)
            handled = self.handled
            for record in mine:  # in order per partition: the last one wins
                handled[record.partition] = record.offset + 1
            return {TopicPartition(self.topic, p) for p in {r.partition for r in mine}}

    async def run(self, settings: Settings, bootstrap: str, stop: asyncio.Event) -> None:
        group = group_id(settings.topic_prefix, self.name)
        # a SIGKILLed predecessor's member would hold its partitions until its session
        # timed out: remove it first, if the lock proves it dead
        members = MemberFile(settings.data_dir, group)
        if members.claim() and (dead := members.previous()) is not None:
            await evict(settings, bootstrap, group, dead)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, settings.session_timeout_s / 3) * 1000),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **settings.kafka_client_options(),
        )
        listener = _Rebalance(self, consumer, members)
        consumer.subscribe([self.topic], listener=listener)
        await consumer.start()
        self.consumer = consumer
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=settings.batch_size)
                try:
                    await self.settle(settings, bootstrap)
                    if not batches:
                        await self.commit_deferred()
                        continue
                    records = [
                        r for tp in sorted(batches, key=lambda t: t.partition) for r in batches[tp]
                    ]
                    fences = self.fences
                    done = await self.handle_recovered(records)
                except (KafkaError, Fenced) as exc:  # redo the batch (idempotent)
                    if isinstance(exc, KafkaError) and not exc.retriable:
                        raise  # redoing cannot help (a record too large, denied access)
                    log.warning("%s: redoing a batch (%r)", self.name, exc)
                    for tp, rs in batches.items():
                        with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                            consumer.seek(tp, rs[0].offset)
                    # a send failed: the broker may be busy; fenced: the rebalance under
                    # way gives the partitions out again
                    await asyncio.sleep(1.0 if isinstance(exc, KafkaError) else 0.2)
                    continue
                offsets = {tp: rs[-1].offset + 1 for tp, rs in batches.items() if tp in done}
                if not offsets:
                    continue
                if self.fences != fences:  # it wrote, fenced: the next fence commits it
                    self.deferred = True
                    continue
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, IllegalStateError) as exc:
                    # lost to a rebalance: the batch is redone, idempotently
                    log.warning("%s: commit failed (%r); the batch will be redone", self.name, exc)
        finally:
            await self.commit_deferred()
            self.consumer = None
            await stop_consumer(consumer)
            members.release()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self, processor: Processor, consumer: AIOKafkaConsumer, members: MemberFile
    ) -> None:
        self.processor = processor
        self.consumer = consumer
        self.members = members

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        gone = {tp.partition for tp in revoked}
        async with self.processor.lock:
            await self.processor.commit_deferred()  # still a member until it rejoins
            for table in self.processor.tables:
                table.drop(gone)
            self.processor.assigned -= gone
            self.processor.pending -= gone
            for partition in gone:
                self.processor.handled.pop(partition, None)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Only note them: their tables are rebuilt by `Processor.settle`, outside this
        listener, as aiokafka heartbeats only once it returns."""
        member_id = member_id_of(self.consumer)
        if member_id is not None:
            self.members.record(member_id)  # for the next process, should this one be killed
        self.processor.pending |= {tp.partition for tp in assigned} - self.processor.assigned


READ_MAX = 50_000  # records handed by one `getmany` of `read_to_end`


async def read_to_end(
    reader: AIOKafkaConsumer,
    ends: dict[TopicPartition, int],
    remaining: set[TopicPartition],
    take: Callable[[TopicPartition, list[ConsumerRecord[bytes, bytes]]], None],
) -> None:
    """Hand `take` every record of the `remaining` partitions (assigned and positioned)
    up to their ends, updating `ends` to where they really end. Every writer of our
    topics seals, so a reported end is exact, but for a writer killed between a sealed
    send's two phases: Tansu then reports the end of the partition as its last batch's
    first record + 1, yet a fetch returns that batch whole. Its records past the
    reported end were written (a killed worker's last verdicts or state changes), so they
    are read too: a partition is done once what was fetched with its end is all handed,
    not when the first record at the end is (one `getmany` may hand part of a batch)."""
    reached: set[TopicPartition] = set()  # at the reported end: what it fetched is left
    remaining = set(remaining)
    while remaining:
        timeout = 0 if remaining <= reached else 500
        batches = await reader.getmany(*remaining, timeout_ms=timeout, max_records=READ_MAX)
        if sum(map(len, batches.values())) < READ_MAX:  # all it had fetched was handed
            for tp in reached & remaining:
                if not batches.get(tp):
                    remaining.discard(tp)  # nothing more was fetched past the end
        for tp, records in batches.items():
            take(tp, records)
            if records and records[-1].offset + 1 >= ends[tp]:
                ends[tp] = records[-1].offset + 1
                reached.add(tp)


async def read_since(
    settings: Settings,
    bootstrap: str,
    topics: Sequence[str],
    starts: Mapping[TopicPartition, int],
    ends_only: bool = False,
) -> tuple[list[ConsumerRecord[bytes, bytes]], dict[TopicPartition, int]]:
    """Every record of `topics` from `starts` (their ends where not given) to the end, and
    the ends (`read_to_end`: a batch left unsealed is read whole, or a killed worker's
    last verdicts would not be recognised as given, and be recorded twice). `ends_only`:
    no records."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
        **settings.kafka_client_options(),
    )  # fmt: skip
    await reader.start()
    try:
        tps = []
        for topic in topics:
            partitions = await reader._client._wait_on_metadata(topic)  # noqa: SLF001
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        remaining = set()
        for tp in tps:
            start = starts.get(tp, ends[tp])
            reader.seek(tp, start)
            if ends[tp] > start and not ends_only:
                remaining.add(tp)
        out: list[ConsumerRecord[bytes, bytes]] = []
        await read_to_end(reader, ends, remaining, lambda tp, records: out.extend(records))
        return out, dict(ends)
    finally:
        await stop_consumer(reader)


async def send_all(producer: AIOKafkaProducer, messages: Sequence[Outgoing]) -> list[Any]:
    """Send sealed and wait for every acknowledgement."""
    if not messages:
        return []
    try:
        return await send_sealed(producer, messages)
    except KafkaError:
        log.exception("a send failed; the batch will be handled again")
        raise


async def write_tables(
    producer: AIOKafkaProducer,
    writes: Sequence[tuple[Table, Mapping[bytes, Any]]],
    encoded: Mapping[str, Mapping[bytes, bytes]] | None = None,
) -> None:
    """Changelog each table's new values (one sealed send), then take them in. `encoded`:
    by table name, values whose changelog bytes the caller has made already."""
    made = encoded or {}
    changes = [table.changes(values, made.get(table.name)) for table, values in writes]
    acked = await send_all(producer, [c for batch in changes for c in batch])
    start = 0
    for (table, values), batch in zip(writes, changes, strict=True):
        table.apply(values, batch, acked[start : start + len(batch)])
        start += len(batch)


OFFSET_KEY = b"\x00changelog-offset"


ROCKS_WRITE_BUFFER = 8 << 20  # bytes of each memtable (RocksDB's default: 64 MiB)


def rocks_options() -> Any:
    """Options of a table's RocksDB: memtables of `ROCKS_WRITE_BUFFER`, two at most. With
    RocksDB's defaults (64 MiB, two) a worker's twelve databases (three tables, four
    partitions) held up to ~1.5 GB of memtables: measured 300 MB against 70 MB for 300 k
    writes of 3 KB to four databases (a projector's request states at 100 k requests)."""
    from rocksdict import Options

    options = Options()
    options.create_if_missing(True)
    options.set_write_buffer_size(ROCKS_WRITE_BUFFER)
    options.set_max_write_buffer_number(2)
    return options


class RocksTable(JsonTable):
    """A `Table` kept in RocksDB on local disk (one database per partition, via rocksdict).

    Each database remembers the changelog offset it holds, so a restarted worker reads
    only the changelog written since; state larger than memory stays on disk.
    """

    def __init__(
        self,
        prefix: str,
        name: str,
        partitions: int,
        directory: Path,
        load: Callable[[bytes], Any] = _json_load,
        dump: Callable[[Any], bytes] = _json_dump,
        cache_states: int = 20_000,
    ) -> None:
        super().__init__(prefix, name, partitions, load, dump, cache_states)
        from rocksdict import Rdict  # optional dependency: the `rocksdb` extra

        self._open: Callable[[str], Any] = lambda path: Rdict(path, rocks_options())
        self.directory = directory / name
        self._dbs: dict[int, Any] = {}

    def _db(self, partition: int) -> Any:
        db = self._dbs.get(partition)
        if db is None:
            path = self.directory / str(partition)
            path.parent.mkdir(parents=True, exist_ok=True)
            db = self._dbs[partition] = self._open(str(path))
        return db

    def stored(self, key: bytes) -> bytes | None:
        partition = partition_for(key, self.partitions)
        if partition not in self._dbs:
            return None
        raw: bytes | None = self._dbs[partition].get(key)
        return raw

    def owned_keys(self) -> list[tuple[int, bytes]]:
        return [
            (partition, key)
            for partition, db in list(self._dbs.items())
            for key in db.keys()  # noqa: SIM118 - an Rdict, not a dict
            if key != OFFSET_KEY
        ]

    def keys_of(self, partition: int) -> list[bytes]:
        db = self._dbs.get(partition)
        if db is None:
            return []
        return [key for key in db.keys() if key != OFFSET_KEY]  # noqa: SIM118 - an Rdict

    def owned(self) -> Iterable[tuple[int, bytes, Any]]:
        for partition, db in list(self._dbs.items()):
            for key, raw in db.items():
                if key != OFFSET_KEY:
                    yield partition, key, self.load(raw)

    def apply(
        self,
        values: Mapping[bytes, Any],
        changes: Sequence[Outgoing] = (),
        acked: Sequence[Any] = (),
    ) -> None:
        super().apply(values, changes, acked)
        for metadata in acked:
            db = self._db(metadata.partition)
            held = db.get(OFFSET_KEY)
            if held is None or int(held) < metadata.offset:
                db[OFFSET_KEY] = str(metadata.offset).encode()

    def _put(self, key: bytes, raw: bytes) -> None:
        self._db(partition_for(key, self.partitions))[key] = raw

    def drop(self, partitions: set[int]) -> None:
        self._forget(partitions)
        for partition in partitions:
            db = self._dbs.pop(partition, None)
            if db is not None:
                db.close()

    async def recover(self, settings: Settings, bootstrap: str, partitions: set[int]) -> int:
        if not partitions:
            return 0
        reader = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
            **settings.kafka_client_options(),
        )  # fmt: skip
        await reader.start()
        count = 0
        try:
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            reader.assign(tps)
            ends = await reader.end_offsets(tps)
            remaining = set()
            for tp in tps:
                held = self._db(tp.partition).get(OFFSET_KEY)
                start = int(held) + 1 if held is not None else 0
                reader.seek(tp, start)
                if ends[tp] > start:
                    remaining.add(tp)

            def take(tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
                nonlocal count
                count += len(records)
                db = self._db(tp.partition)
                for record in records:
                    if record.key is None:
                        continue
                    self.cache.pop(record.key, None)
                    if record.value is None:
                        db.delete(record.key)
                    else:
                        db[record.key] = record.value
                if records:
                    db[OFFSET_KEY] = str(records[-1].offset).encode()

            await read_to_end(reader, ends, remaining, take)
            return count
        finally:
            await stop_consumer(reader)


def make_table(
    settings: Settings,
    name: str,
    load: Callable[[bytes], Any] = _json_load,
    dump: Callable[[Any], bytes] = _json_dump,
    cache_states: int | None = None,
) -> Table:
    """The table store the settings ask for (`LEDGER_STORE`): on RocksDB, or in memory as
    objects, or (`cache_states` given) in memory as JSON with that many as objects."""
    prefix, partitions = settings.topic_prefix, settings.partitions
    if settings.store == "rocksdb":
        directory = settings.data_dir / "worker" / settings.topic_prefix.rstrip(".") / "tables"
        cached = cache_states or settings.cache_states
        return RocksTable(prefix, name, partitions, directory, load, dump, cached)
    if cache_states is not None:
        return JsonTable(prefix, name, partitions, load, dump, cache_states)
    return Table(prefix, name, partitions, load, dump)
