"""The query side's copy of the read models: it tails the projector's table changelogs.

Every API process reads *all* partitions of the request and customer changelogs (no
consumer group), so each one holds every state, and a global list (pipeline, overdue,
abuse) is the same whichever worker folded which partition, and however many there
are. A changelog record is the state of one key (a request's: its history after a lean
head, `projections.state.request_json`); the newest wins. Records are parsed (a request's
history folded again, `request_from_json`) on first use and cached. It also keeps the
newest alerts from `ledger.alerts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger.adapters.config import Settings
from ledger.adapters.kafka import stop_consumer
from ledger.adapters.topics import Topics
from ledger.rules.policy import Policy
from projections import views
from projections.listindex import Entry, ListIndex
from projections.metricsindex import Part, Totals, part_from, part_of, policy_tag
from projections.state import (
    CustomerState,
    RequestState,
    history_length,
    newest_of,
    record_head,
    request_as_of,
    request_from_json,
)
from workers.projector import table_names
from workers.runtime import changelog_topic, rocks_options

MAX_ALERTS = 1000
SUM_SLICE = 500  # request states summed into the metrics between turns of the event loop
INDEX_SLICE = 2000  # requests indexed between turns of the event loop while catching up
IDLE_S = 1.0  # no changelog record for this long: the stream has paused
log = logging.getLogger(__name__)


EVENT_IDS = b'"event_ids":['
INDEX_ERRORS = (ValueError, KeyError, TypeError, IndexError)  # a state this version cannot read


class _Cache:
    """Each key's newest state as its JSON (in memory, or on a scratch RocksDB: `_OnDisk`);
    the `keep` most recently asked for also parsed (a walk over every state parses them
    for that walk only: the API's memory grows with the JSON, not with every state's
    objects)."""

    def __init__(
        self,
        model: Any,
        keep: int = 2_000,
        raw: Any = None,
        load: Callable[[bytes], Any] | None = None,
    ) -> None:
        self.model = model
        self.load: Callable[[bytes], Any] = load or model.model_validate_json  # JSON -> state
        self.keep = keep
        self.raw: Any = {} if raw is None else raw  # key -> JSON: `get`, `[]=`, `pop`
        self.parsed: OrderedDict[str, Any] = OrderedDict()
        self.events: dict[str, int] = {}  # how many event ids each state holds (every key)
        self.total_events = 0  # their sum, kept as records arrive: /health reads it

    def __len__(self) -> int:
        return len(self.events)

    def keys(self) -> list[str]:
        return list(self.events)

    def value(self, key: str) -> bytes | None:
        """A state's JSON (None: none)."""
        return self.raw.get(key) if key in self.events else None

    def values(self, keys: list[str]) -> list[bytes | None]:
        """`value` of each key, read together: a RocksDB reads many at once (a second
        API indexing 320 k requests read them one by one: a sixth of its start)."""
        many = getattr(self.raw, "get_many", None)
        got = many(keys) if many is not None else [self.raw.get(key) for key in keys]
        return [v if key in self.events else None for key, v in zip(keys, got, strict=True)]

    def put(self, key: str, value: bytes | None) -> None:
        self.parsed.pop(key, None)
        self.total_events -= self.events.pop(key, 0)
        if value is None:
            self.raw.pop(key, None)
        else:
            self.raw[key] = value
            count = self.events[key] = self._count_events(value)
            self.total_events += count

    def _count_events(self, raw: bytes) -> int:
        """How many events a state holds, read off its JSON without parsing it: a
        request's history (`history_length`); a customer's `event_ids`, quoted strings
        that cannot hold a quote. Parsed if the JSON is odd."""
        if self.model is RequestState and (length := history_length(raw)) is not None:
            return length
        start = raw.find(EVENT_IDS)
        if start >= 0 and raw.find(EVENT_IDS, start + 1) < 0:
            start += len(EVENT_IDS)
            end = raw.find(b"]", start)
            if end >= 0:
                return raw.count(b'"', start, end) // 2
        try:
            state = self.load(raw)
        except ValueError:  # a state this version cannot read: counted when it can
            return 0
        return len(state.event_ids)

    def get(self, key: str) -> Any:
        """`peek`, and the state kept parsed as the most recently asked."""
        state = self.peek(key)
        if state is not None:
            parsed = self.parsed
            parsed[key] = state
            parsed.move_to_end(key)
            while len(parsed) > self.keep:
                parsed.popitem(last=False)
        return state

    def peek(self, key: str) -> Any:
        """A key's state, parsed if it is not kept parsed, and not kept: safe from a
        thread (it only reads; the event loop's thread changes the dicts)."""
        state = self.parsed.get(key)
        if state is not None:
            return state
        raw = self.value(key)
        return None if raw is None else self.load(raw)

    def all(self) -> _Walk:
        """Every state, parsed as the walk reaches it (`_Walk`)."""
        return _Walk(self, self.keys())


class _Walk:
    """The states of the keys a cache held when it was asked, each parsed as it is reached
    and not kept (`_Cache.peek`, safe off the event loop): a view walks them in a thread
    (`Api.walk`), so the event loop never parses a whole ledger. Every pass reads afresh;
    a key gone meanwhile is skipped."""

    def __init__(
        self, cache: _Cache, keys: list[str], skip: Callable[[str], bool] | None = None
    ) -> None:
        self.cache = cache
        self.keys = keys
        self.skip = skip  # keys not to parse: their states have nothing for the view

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Any]:
        peek, skip = self.cache.peek, self.skip
        for key in self.keys:
            if skip is not None and skip(key):
                continue
            state = peek(key)
            if state is not None:
                yield state


class _OnDisk:
    """Key -> JSON on a RocksDB the API process keeps for itself (`LEDGER_STORE=rocksdb`):
    its copy of every state at rest on local disk rather than in memory. A scratch
    database: wiped when the process starts (it reads the changelogs from their
    beginning anyway) and removed when it stops."""

    def __init__(self, directory: Path) -> None:
        from rocksdict import Rdict, WriteOptions  # optional: the `rocksdb` extra

        shutil.rmtree(directory, ignore_errors=True)
        directory.parent.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.db = Rdict(str(directory), rocks_options())
        unlogged = WriteOptions()
        # a scratch copy: nothing to recover after a crash (a property; the stub says method)
        unlogged.disable_wal = True  # type: ignore[assignment,method-assign]
        self.db.set_write_options(unlogged)

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        many: list[str | int | float | bytes | bool] = list(keys)
        return cast(list[bytes | None], self.db.get(many))  # one multi-get

    def __setitem__(self, key: str, value: bytes) -> None:
        self.db[key] = value

    def pop(self, key: str, default: None = None) -> None:
        del self.db[key]

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class ReadModel:
    def __init__(self, settings: Settings, bootstrap: str, policy: Policy | None = None) -> None:
        prefix = settings.topic_prefix
        requests_table, customers_table = table_names(prefix)
        self.topics = Topics(prefix)
        self.requests_topic = changelog_topic(prefix, requests_table)
        self.customers_topic = changelog_topic(prefix, customers_table)
        self._disks: list[_OnDisk] = []
        if settings.store == "rocksdb":  # this process's copy, under its own port
            scratch = settings.data_dir / "api" / f"{prefix}{settings.api_port}"
            self._disks = [_OnDisk(scratch / "requests"), _OnDisk(scratch / "customers")]
        keep = settings.api_cache_states
        disks: list[Any] = self._disks or [None, None]
        self._caches = {
            self.requests_topic: _Cache(RequestState, keep, disks[0], request_from_json),
            self.customers_topic: _Cache(CustomerState, keep, disks[1]),
        }
        self.version = 0  # counts the batches of state changes taken in
        self.alerts: OrderedDict[str, dict[str, Any]] = OrderedDict()  # by alert_id, oldest first
        self.deliveries: dict[str, dict[str, dict[str, Any]]] = {}  # alert_id -> url -> record
        self.held: dict[bytes, dict[str, Any]] = {}  # inbox position -> the held event
        # the pipeline's and the overdue list's indexes, kept as request states change
        self.index = ListIndex(policy or Policy(), settings.overdue_days, settings.overdue_unit)
        self.index_ok = True  # False once a state could not be indexed: views answer
        # the decision metrics, added up from each request's part as its state changes
        self.totals = Totals(policy or Policy())
        self._part_tag = policy_tag(self.totals.policy)
        # each request's part, with its newest event's instant (one value: a walk in a
        # thread reads the pair in one step, `metrics_as_of`)
        self._parts: dict[str, tuple[Part, datetime]] = {}
        self._unsummed: set[str] = set()  # requests changed since their part was taken
        # until the read model first reaches the changelogs' ends (`run`), requests are
        # indexed once each when it does, not at every record
        self._catching_up = False
        self._unindexed: set[str] = set()
        self._settings = settings
        self._bootstrap = bootstrap
        self._consumer: AIOKafkaConsumer | None = None
        self._targets: dict[TopicPartition, int] = {}
        self._newest_ms: int | None = None
        self._positions: dict[TopicPartition, int] = {}
        self.ready = asyncio.Event()

    # -- queries -------------------------------------------------------------------
    def indexed(self, as_of: datetime) -> ListIndex | None:
        """The list index, when it answers as of `as_of` (else: refold with the views)."""
        return self.index if self.index_ok and self.index.covers(as_of) else None

    async def metrics(self, as_of: datetime) -> dict[str, Any] | None:
        """The decision metrics as of `as_of` from the running totals (None: they do not
        answer as of then, refold with the views). The totals take each request's part as
        its record comes (`_take_part`); the parts still to take (records that came while
        catching up, or without a part this read model can use) are taken first, a slice
        at a time, so the event loop keeps its turn (as many as were waiting when it was
        asked: a stream faster than the summing cannot keep it answering for ever; what
        changes meanwhile is summed next time)."""
        budget = len(self._unsummed)
        while budget > 0 and self._unsummed and self.index_ok:
            self.sum_parts(min(SUM_SLICE, budget))
            budget -= SUM_SLICE
            await asyncio.sleep(0)
        if self.indexed(as_of) is None:
            return None
        return self.totals.row(as_of)

    def sum_parts(self, most: int) -> None:
        """Take the parts of up to `most` changed requests into the totals."""
        cache = self._caches[self.requests_topic]
        for _ in range(min(most, len(self._unsummed))):
            key = self._unsummed.pop()
            old = self._parts.pop(key, None)
            if old is not None:
                self.totals.remove(old[0])
            raw = cache.value(key)
            if raw is None:
                continue
            try:
                obj = record_head(raw)
                part = part_from(obj, self._part_tag)  # as the projector took it
                if part is None:
                    state = cache.parsed.get(key) or request_from_json(raw)
                    part = part_of(state, self.totals.policy)
                newest = newest_of(obj)
            except INDEX_ERRORS:
                log.exception("request %s cannot be summed: metrics refold instead", key)
                self.index_ok = False
                return
            self._parts[key] = (part, newest)
            self.totals.add(part)

    def metrics_as_of(self, as_of: datetime, policy: Policy) -> dict[str, Any]:
        """`views.metrics` over the requests as of `as_of`, an instant the totals do not
        answer for (before the newest event): a request whose part is held with its
        newest event at or before `as_of` was then as now, and its part is added as
        held; only the others are parsed and refolded as of then. Off the event loop:
        each part is read with its instant in one step, so never a newer part with an
        older instant."""
        if policy != self.totals.policy or not self.index_ok:
            return views.metrics(self.requests(), as_of, policy)
        totals = Totals(policy)
        parts, unsummed = self._parts, self._unsummed
        cache = self._caches[self.requests_topic]
        keys = cache.keys()  # a snapshot: the stream goes on meanwhile
        for key in keys:
            held = parts.get(key)
            if held is not None and held[1] <= as_of and key not in unsummed:
                totals.add(held[0])
                continue
            state = cache.peek(key)
            known = None if state is None else request_as_of(state, as_of)
            if known is not None:
                totals.add(part_of(known, policy))
        return totals.row(as_of)

    def requests(self) -> Iterable[RequestState]:
        """Every request, parsed as the walk reaches it: iterate it off the event loop."""
        return self._caches[self.requests_topic].all()

    def requests_as_of(self, as_of: datetime, idle: Callable[[Entry], bool]) -> Iterable[Any]:
        """The requests a view as of `as_of` (before the newest event) may need, parsed as
        the walk reaches them: a request whose index entry shows its newest event at or
        before `as_of` is then as it is now (`request_as_of` keeps such a state whole), so
        when `idle` says its entry has nothing for the view, it is not parsed at all. As
        of a month back, most requests were decided before then: a walk parses the rest."""
        entries = self.index.entries if self.index_ok else {}
        unindexed = self._unindexed  # their entries, if any, are of an older state

        def skip(key: str) -> bool:
            entry = entries.get(key)
            return (
                entry is not None
                and entry.newest_at <= as_of
                and key not in unindexed
                and idle(entry)
            )

        cache = self._caches[self.requests_topic]
        return _Walk(cache, cache.keys(), skip)

    def customers(self) -> Iterable[CustomerState]:
        """Every customer, parsed as the walk reaches it: iterate it off the event loop."""
        return self._caches[self.customers_topic].all()

    def request(self, request_id: str) -> RequestState | None:
        state: RequestState | None = self._caches[self.requests_topic].get(request_id)
        return state

    def peek_request(self, request_id: str) -> RequestState | None:
        """`request` without keeping it parsed; safe off the event loop (`_Cache.peek`)."""
        state: RequestState | None = self._caches[self.requests_topic].peek(request_id)
        return state

    def customer(self, customer_id: str) -> CustomerState | None:
        state: CustomerState | None = self._caches[self.customers_topic].get(customer_id)
        return state

    def recent_alerts(self, webhooks: list[str]) -> list[dict[str, Any]]:
        """Alerts, newest first (by `raised_at` as an instant, whatever its offset, then
        `alert_id`: the same order whatever order the alert topic's partitions were read
        in), each with its delivery status per webhook."""
        rows = []
        newest_first = sorted(
            self.alerts.values(),
            key=lambda a: (views.text_instant_key(a.get("raised_at")), str(a.get("alert_id", ""))),
            reverse=True,
        )
        for alert in newest_first:
            recorded = self.deliveries.get(alert.get("alert_id", ""), {})
            urls = list(dict.fromkeys([*webhooks, *recorded]))
            status = {url: recorded.get(url, {"status": "pending", "webhook": url}) for url in urls}
            rows.append({**alert, "deliveries": status})
        return rows

    def events_folded(self) -> int:
        """How many distinct ledger events the read models hold (for catching up): kept
        as changelog records arrive, so /health costs nothing per state."""
        return sum(cache.total_events for cache in self._caches.values())

    def counts(self) -> tuple[int, int]:
        """How many requests and customers the read models hold."""
        return len(self._caches[self.requests_topic]), len(self._caches[self.customers_topic])

    def newest_data_age_s(self) -> float | None:
        """Seconds since the newest record this copy holds was written (None: none yet):
        during a broker outage it grows, so a reader can tell how stale the answers are."""
        if self._newest_ms is None:
            return None
        return round(max(0.0, time.time() - self._newest_ms / 1000), 1)

    def lag(self) -> dict[str, int]:
        """Records between this copy and the end of each changelog (per topic)."""
        out: dict[str, int] = {}
        for tp, end in self._targets.items():
            behind = max(0, end - self._positions.get(tp, 0))
            out[tp.topic] = out.get(tp.topic, 0) + behind
        return out

    # -- the tailing loop -----------------------------------------------------------
    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
            **self._settings.kafka_client_options(),
        )
        await consumer.start()
        self._consumer = consumer
        self._catching_up = True
        try:
            partitions = await self._partitions(consumer)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            self._positions = dict(await consumer.beginning_offsets(partitions))
            self._targets = dict(await consumer.end_offsets(partitions))
            refreshed = last_record = asyncio.get_running_loop().time()
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
                if any(batches.values()):
                    last_record = asyncio.get_running_loop().time()
                elif self._unsummed and asyncio.get_running_loop().time() - last_record > IDLE_S:
                    # the stream has paused: warm the metrics' totals (while it flows, the
                    # CPU is the stream's; a query sums what changed since the last one)
                    self.sum_parts(SUM_SLICE)
                for tp, records in batches.items():
                    self._apply(tp.topic, records)
                    if records:
                        self._positions[tp] = records[-1].offset + 1
                        newest = max(r.timestamp for r in records)
                        self._newest_ms = max(self._newest_ms or 0, newest)
                if not self.ready.is_set() and self._reached_targets():
                    await self._index_caught_up()
                    self.ready.set()
                now = asyncio.get_running_loop().time()
                if now - refreshed > 5:  # for the lag figure in /health
                    refreshed = now
                    self._targets = dict(await consumer.end_offsets(partitions))
        finally:
            await stop_consumer(consumer)
            for disk in self._disks:
                disk.close()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """Every partition of the changelogs and alerts, once they exist."""
        names = [
            self.requests_topic, self.customers_topic, self.topics.alerts, self.topics.deliveries,
            self.topics.held,
        ]  # fmt: skip
        while True:
            await consumer._client.force_metadata_update()
            found = {name: consumer.partitions_for_topic(name) for name in names}
            if all(found.values()):
                return [TopicPartition(n, p) for n, ps in found.items() for p in sorted(ps or ())]
            await asyncio.sleep(0.5)  # the workers create the changelogs when they start

    def _reached_targets(self) -> bool:
        return all(self._positions.get(tp, 0) >= end for tp, end in self._targets.items())

    def _apply(self, topic: str, records: list[Any]) -> None:
        if topic == self.topics.held:
            for record in records:
                if record.key is None:
                    continue
                if record.value is None:
                    self.held.pop(record.key, None)
                    continue
                with contextlib.suppress(orjson.JSONDecodeError):
                    self.held[record.key] = orjson.loads(record.value)
            return
        if topic == self.topics.deliveries:
            for record in records:
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                    delivery = orjson.loads(record.value)
                    by_url = self.deliveries.setdefault(delivery["alert_id"], {})
                    by_url[delivery["webhook"]] = delivery
            return
        if topic == self.topics.alerts:
            for record in records:
                with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                    alert = orjson.loads(record.value)
                    self.alerts.setdefault(alert["alert_id"], alert)  # a repeat is the same alert
            while len(self.alerts) > MAX_ALERTS:
                self.alerts.popitem(last=False)
            return
        cache = self._caches[topic]
        self.version += 1  # a walk's result asked before is not this one's (`Api.shared`)
        # each key's newest record of the batch, and only it: the batch is applied in one
        # step, so no query sees the states between (in a replay a request has a record
        # for each batch of the projector's that touched it, often several in one of ours)
        newest: dict[bytes, bytes | None] = {}
        for record in records:
            if record.key is not None:
                newest[record.key] = record.value
        for raw_key, value in newest.items():
            key = raw_key.decode()
            cache.put(key, value)
            if topic != self.requests_topic:
                continue
            if self._catching_up:
                self._unindexed.add(key)  # indexed once, at its newest, on reaching the end
                self._unsummed.add(key)  # summed then too (or when asked before)
                continue
            try:
                state = None if value is None else record_head(value)
                self._take_part(key, state)
                if self.index_ok:
                    self.index.put_parsed(key, state)
            except INDEX_ERRORS:
                log.exception("request %s cannot be indexed: lists refold instead", key)
                self.index_ok = False

    def _take_part(self, key: str, state: dict[str, Any] | None) -> None:
        """A request's new share of the metrics, from its state's JSON (parsed): the part
        the projector wrote into it (`with_part`), or, without one this read model can
        use, the state's to take later (`sum_parts`, which parses it)."""
        old = self._parts.pop(key, None)
        part = None if state is None else part_from(state, self._part_tag)
        self._unsummed.discard(key)
        if state is not None and part is not None and old is not None and part == old[0]:
            # most events leave a request's share as it was (an intake's and its score's
            # are the same): the totals are not taken apart and summed again
            self._parts[key] = (part, newest_of(state))
            return
        if old is not None:
            self.totals.remove(old[0])
        if state is None:
            return
        if part is None:
            self._unsummed.add(key)
            return
        self._parts[key] = (part, newest_of(state))
        self.totals.add(part)

    async def _index_caught_up(self) -> None:
        """Index the requests whose records came while catching up, each once (a request
        has a changelog record per event it folded; only its newest counts). Their
        entries are read a slice at a time, the event loop's turn between, and go into
        the lists together, each list sorted once."""
        cache = self._caches[self.requests_topic]
        entries: dict[str, Entry | None] = {}
        # on RocksDB in key order: neighbouring keys are read from the same blocks (320 k
        # requests' records: 1.1 s against 2.4-3.5 s in a set's order)
        pending = sorted(self._unindexed) if self._disks else list(self._unindexed)
        for start in range(0, len(pending), INDEX_SLICE):
            keys = pending[start : start + INDEX_SLICE]
            for key, value in zip(keys, cache.values(keys), strict=True):
                try:
                    state = None if value is None else record_head(value)
                    if key in self._unsummed:
                        self._take_part(key, state)
                    entries[key] = None if state is None else self.index.entry_parsed(state)
                except INDEX_ERRORS:
                    log.exception("request %s cannot be indexed: lists refold instead", key)
                    self.index_ok = False
            await asyncio.sleep(0)
        if self.index_ok:
            self.index.put_entries(entries)
        self._unindexed.clear()
        self._catching_up = False
