"""The embedded ledger's durable copy, and how a fresh embedded broker is restored from it.

The embedded broker (Tansu) keeps its log in memory only. So `ledger up` keeps a copy of
everything the ledger owns in one SQLite file, `LEDGER_DATA_DIR/ledger.db`, written with
`synchronous=FULL` (every transaction is fsynced before it returns):

- `records`: every record of every topic of the ledger (the inbox, `ledger.events`,
  rejections, alerts and their deliveries, held events, the workers' changelogs and
  marks), with its partition, offset, key, value, headers and timestamp;
- `group_offsets`: the committed offsets of the ledger's consumer groups, saved in the
  same transaction as the records they were read with, and never ahead of them;
- `journal`: publishes acknowledged through `ledger publish` or `POST /events` that the
  copy does not hold yet. A publish is journaled (fsynced) before it is sent, its inbox
  records carry a `ledger-journal` header, and the journal row goes in the transaction
  that copies the record.

`workers.mirror` keeps the copy (it reads each group's offsets, then every topic up to its
end, then saves both). `restore` writes the copy back into a fresh broker, record by
record at the same offsets, commits the saved group offsets and sends the journal's
unsent publishes: the workers then resume exactly as after a SIGKILL of every process.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ledger.adapters.config import Settings
from ledger.adapters.kafka import (
    Outgoing,
    ensure_topics,
    resend_only_unwritten,
    send_sealed,
    stop_consumer,
)
from ledger.adapters.topics import FOREVER, Topics

JOURNAL_HEADER = "ledger-journal"
FILE_NAME = "ledger.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    key BLOB,
    value BLOB,
    headers BLOB,
    timestamp INTEGER,
    PRIMARY KEY (topic, partition, "offset")
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    journaled_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Copied:
    """One record of a topic, as the copy keeps it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int | None


def journal_seq(headers: Sequence[tuple[str, bytes]]) -> int | None:
    """The journal row a published record came from, if any."""
    for name, value in headers:
        if name == JOURNAL_HEADER:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _pack(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    return orjson.dumps([[k, v.hex()] for k, v in headers]) if headers else None


def _unpack(raw: bytes | None) -> tuple[tuple[str, bytes], ...]:
    return tuple((k, bytes.fromhex(v)) for k, v in orjson.loads(raw)) if raw else ()


class DurableStore:
    """The SQLite copy. Several processes may open it (the mirror, the API, `ledger
    publish`); SQLite's WAL serialises their writes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # one connection, used from one thread at a time (the API journals off its loop)
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # fsync at every commit
        self.db.executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, data_dir: Path) -> DurableStore:
        return cls(data_dir / FILE_NAME)

    @classmethod
    def of_broker(cls, data_dir: Path, bootstrap: str) -> DurableStore | None:
        """The copy in `data_dir` if it is the copy of the embedded broker at `bootstrap`
        (a publisher journals into it), else None."""
        path = data_dir / FILE_NAME
        if not path.exists():
            return None
        store = cls(path)
        if store.get_meta("bootstrap") != bootstrap:
            store.close()
            return None
        return store

    def get_meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = ?",
                (name, value, value),
            )

    def close(self) -> None:
        self.db.close()

    # --- the mirror's side ----------------------------------------------------------

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """Per (topic, partition): the offset after the last record copied."""
        rows = self.db.execute(
            'SELECT topic, partition, MAX("offset") + 1 FROM records GROUP BY topic, partition'
        )
        return {(t, p): n for t, p, n in rows}

    def save(
        self,
        topics: dict[str, int],
        records: Sequence[Copied],
        group_offsets: dict[tuple[str, str, int], int],
    ) -> None:
        """Copied records and the group offsets read before them, in one fsynced
        transaction; the journal rows of copied publishes go in the same one."""
        seqs = [(s,) for r in records if (s := journal_seq(r.headers)) is not None]
        with self._transaction():
            self.db.executemany(
                "INSERT INTO topics VALUES (?, ?) ON CONFLICT(topic) DO UPDATE "
                "SET partitions = MAX(partitions, excluded.partitions)",
                topics.items(),
            )
            self.db.executemany(
                "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (r.topic, r.partition, r.offset, r.key, r.value, _pack(r.headers), r.timestamp)
                    for r in records
                ),
            )
            self.db.executemany(
                "INSERT INTO group_offsets VALUES (?, ?, ?, ?) ON CONFLICT(grp, topic, partition) "
                'DO UPDATE SET "offset" = excluded."offset"',
                ((g, t, p, o) for (g, t, p), o in group_offsets.items()),
            )
            self.db.executemany("DELETE FROM journal WHERE seq = ?", seqs)

    # --- the publishers' side -------------------------------------------------------

    def journal(self, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> list[int]:
        """Journal messages about to be published (fsynced); their sequence numbers."""
        now = time.time()
        with self.lock, self._transaction():
            self.db.executemany(
                "INSERT INTO journal (topic, key, value, journaled_at) VALUES (?, ?, ?, ?)",
                ((topic, k, v, now) for k, v in messages),
            )
            # the write lock is ours since BEGIN IMMEDIATE: the last rows are these
            (last,) = self.db.execute("SELECT MAX(seq) FROM journal").fetchone()
        return list(range(last - len(messages) + 1, last + 1))

    # --- restoring ------------------------------------------------------------------

    def topics(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT topic, partitions FROM topics"))

    def records(self, topic: str, partition: int) -> Iterator[Copied]:
        rows = self.db.execute(
            'SELECT "offset", key, value, headers, timestamp FROM records '
            'WHERE topic = ? AND partition = ? ORDER BY "offset"',
            (topic, partition),
        )
        for offset, key, value, headers, timestamp in rows:
            yield Copied(topic, partition, offset, key, value, _unpack(headers), timestamp)

    def count(self) -> int:
        (n,) = self.db.execute("SELECT COUNT(*) FROM records").fetchone()
        return int(n)

    def group_offsets(self) -> dict[str, dict[tuple[str, int], int]]:
        groups: dict[str, dict[tuple[str, int], int]] = {}
        for grp, topic, partition, offset in self.db.execute(
            'SELECT grp, topic, partition, "offset" FROM group_offsets'
        ):
            groups.setdefault(grp, {})[(topic, partition)] = offset
        return groups

    def unsent(self) -> list[tuple[int, str, bytes | None, bytes]]:
        """Journaled publishes the copy does not hold: (seq, topic, key, value)."""
        return list(self.db.execute("SELECT seq, topic, key, value FROM journal ORDER BY seq"))

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


# --- restoring a fresh broker ---------------------------------------------------------


class RestoreError(RuntimeError):
    """The broker did not take the copy back at the same offsets."""


@dataclass(frozen=True)
class Restored:
    records: int
    groups: int
    republished: int
    seconds: float


async def restore(settings: Settings, bootstrap: str, store: DurableStore) -> Restored:
    """Write the copy into a fresh broker: each partition's records at their offsets, the
    groups' committed offsets, then the journaled publishes the copy does not hold."""
    started = time.monotonic()
    topics = store.topics()
    retention = Topics(settings.topic_prefix).retention_ms()
    options = settings.kafka_client_options()
    for compact in (False, True):
        chosen = {t: retention.get(t, FOREVER) for t in topics if _compacted(t) == compact}
        by_count: dict[int, dict[str, int]] = {}
        for topic, ms in chosen.items():
            by_count.setdefault(topics[topic], {})[topic] = ms
        for partitions, named in by_count.items():
            extra = {"cleanup.policy": "compact"} if compact else None
            await ensure_topics(
                bootstrap, named, partitions, options, extra_configs=extra, settings=settings
            )
    producer = resend_only_unwritten(
        AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=0,
            max_batch_size=1024 * 1024,
            **options,
        )
    )
    await producer.start()
    count = 0
    try:
        for topic, partitions in sorted(topics.items()):
            for partition in range(partitions):
                count += await _restore_partition(producer, store, topic, partition)
        groups = store.group_offsets()
        for group, offsets in groups.items():
            await _commit(settings, bootstrap, group, offsets)
        unsent = store.unsent()
        if unsent:
            await send_sealed(
                producer,
                [
                    Outgoing(topic, key, value, [(JOURNAL_HEADER, str(seq).encode())])
                    for seq, topic, key, value in unsent
                ],
            )
    finally:
        await producer.stop()
    return Restored(count, len(groups), len(unsent), time.monotonic() - started)


def _compacted(topic: str) -> bool:
    return topic.endswith("-changelog")


async def _restore_partition(
    producer: AIOKafkaProducer, store: DurableStore, topic: str, partition: int
) -> int:
    expected = 0
    chunk: list[Outgoing] = []
    for record in store.records(topic, partition):
        if record.offset != expected:
            raise RestoreError(
                f"{topic}[{partition}]: the copy jumps from offset {expected - 1} to "
                f"{record.offset}; it cannot be restored at the same offsets"
            )
        expected += 1
        chunk.append(
            Outgoing(topic, record.key, record.value, list(record.headers), partition,
                     record.timestamp)
        )  # fmt: skip
        if len(chunk) >= 20_000:
            await _send_at(producer, chunk, expected - len(chunk))
            chunk = []
    if chunk:
        await _send_at(producer, chunk, expected - len(chunk))
    return expected


async def _send_at(producer: AIOKafkaProducer, chunk: list[Outgoing], first: int) -> None:
    acked = await send_sealed(producer, chunk)
    if acked[0].offset != first or acked[-1].offset != first + len(chunk) - 1:
        raise RestoreError(
            f"{chunk[0].topic}[{chunk[0].partition}]: records meant for offsets {first}.. "
            f"landed at {acked[0].offset}..{acked[-1].offset}; is the broker fresh?"
        )


async def _commit(
    settings: Settings, bootstrap: str, group: str, offsets: dict[tuple[str, int], int]
) -> None:
    """Commit a group's offsets without joining it (nobody consumes yet)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        **settings.kafka_client_options(),
    )
    await consumer.start()
    try:
        tps = {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await stop_consumer(consumer)
