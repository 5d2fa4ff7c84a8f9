"""The projector: ledger.events -> request and customer states, and the alerts they raise.

Its tables are keyed like `ledger.events` (raw request_id / customer_id bytes), so they
are co-partitioned with it. Each batch decodes every event once, folds it with the pure
`projections` folds, and writes each touched key once. The folds are idempotent by
event_id, so a redelivered batch (after a crash or a rebalance) changes nothing.

Alerting (CONTRACT section 6) runs here too, on the states this worker owns:
- on every event, the subject before the event and after it, as of the event's time
  (a request decided on day 12 had crossed its deadline on day 10);
- on a timer (`LEDGER_ALERT_INTERVAL`), as of now (`LEDGER_CLOCK` or the wall clock), the
  owned states whose next deadline has come (`projections.alerts.next_check`, kept in a
  heap as states fold: a deadline index), for the partitions whose log has been handled
  to its end. A partition taken over (start-up, rebalance) has all its states checked
  once, at the first tick that finds it handled to its end, as they have no deadline
  known yet.
Each crossing has a stable `alert_id`; the ids already raised live in a changelogged
table keyed by subject, so a restarted or rebalanced worker does not raise them again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaProducer

from events import InvalidEvent, decode_recorded
from ledger.adapters.config import Settings
from ledger.adapters.kafka import Outgoing
from ledger.adapters.topics import Topics
from ledger.rules.calendar import Unit
from ledger.rules.policy import Policy, load_policy
from projections.alerts import (
    Alert,
    customer_alerts,
    event_alerts,
    new_alerts,
    next_check,
    request_alerts,
)  # fmt: skip
from projections.records import policy_tag, request_record
from projections.state import (
    CustomerState,
    RequestState,
    apply_customer,
    apply_request,
    record_head,
    request_facts,
    request_from_json,
    request_json,
)
from workers.runtime import Fenced, Processor, Table, make_table, send_all, write_tables

log = logging.getLogger(__name__)
REPLAY_LAG = timedelta(hours=1)
CHECK_SLICE = 2000  # due states checked under the stream's lock at a time


def table_names(prefix: str) -> tuple[str, str]:
    return f"{prefix}projector-requests", f"{prefix}projector-customers"


class Projector:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        prefix = settings.topic_prefix
        self.settings = settings
        self.producer = producer
        self.topics = Topics(prefix)
        requests_name, customers_name = table_names(prefix)
        cache = settings.cache_states
        self.policy: Policy = load_policy(settings.policy_file)
        self.part_tag = policy_tag(self.policy)
        dump = _codec(RequestState)[1]
        self.requests = make_table(
            settings, requests_name, request_from_json,
            lambda state: self._record(state, dump(state)), cache,
        )  # fmt: skip
        self.customers = make_table(settings, customers_name, *_codec(CustomerState), cache)
        self.raised = make_table(settings, f"{prefix}alerts-raised")
        self.days: int = settings.overdue_days
        self.unit: Unit = settings.overdue_unit
        self.stream_time: dict[int, datetime] = {}
        self.due = DeadlineIndex()
        self.sweep: set[int] = set()  # partitions taken over, their states not yet checked
        self.processor = Processor(
            "projector", self.topics.events, self.handle,
            [self.requests, self.customers, self.raised], on_assigned=self._taken_over,
        )  # fmt: skip

    async def _taken_over(self, partitions: set[int]) -> None:
        """States recovered for new partitions: each checked once, at the first tick that
        finds its partition ready (`_sweep`). Their keys are listed then, not here: on an
        assignment they would hold up the stream (a second for 320 k states on RocksDB)."""
        self.sweep |= partitions

    def _sweep(self, ready: set[int], now: datetime) -> None:
        """Every state of each partition taken over and now ready: due at once."""
        for partition in sorted(self.sweep):
            if partition not in self.processor.assigned:  # gone to another worker
                self.sweep.discard(partition)
            elif partition in ready or self.live(partition, now):
                self.sweep.discard(partition)
                for table in (self.requests, self.customers):
                    for key in table.keys_of(partition):
                        self.due.put(table is self.customers, key, EVER)

    # -- one batch -------------------------------------------------------------------
    async def handle(self, batch: list[Any]) -> None:
        now = self.settings.now()
        touched_requests: dict[bytes, RequestState] = {}
        touched_customers: dict[bytes, CustomerState] = {}
        # each touched request's stored JSON before the batch, and the recorded bytes of
        # the events appended to it in order since (None: refolded; written whole)
        stored: dict[bytes, bytes | None] = {}
        appended: dict[bytes, list[bytes] | None] = {}
        latest: dict[tuple[bool, bytes], datetime] = {}  # each touched state's latest `when`
        alerts = _Raising(self.raised)
        for record in batch:
            try:
                event = decode_recorded(record.value)
            except InvalidEvent:
                continue  # cannot happen: only the validator writes ledger.events
            seen = self.stream_time.get(record.partition)
            if seen is None or event.occurred_at > seen:
                self.stream_time[record.partition] = event.occurred_at
            when = min(event.occurred_at, now)
            if event.type == "escalation":
                key = event.data.customer_id.encode()
                customer = touched_customers.get(key) or self.customers.get(key)
                folded_c = apply_customer(customer, event)
                if folded_c is not None and folded_c is not customer:
                    touched_customers[key] = folded_c
                    found = event_alerts(None, folded_c, when, self.policy, self.days, self.unit)
                    alerts.add(key, found)
                    latest[(True, key)] = max(when, latest.get((True, key), when))
                continue
            key = event.data.request_id.encode()
            request = touched_requests.get(key) or self.requests.get(key)
            folded_r = apply_request(request, event)
            if folded_r is not None and folded_r is not request:
                if key not in touched_requests:
                    stored[key] = self.requests.stored(key) if request is not None else None
                    appended[key] = []
                chain = appended[key]
                if chain is not None:
                    if folded_r.history[-1] is event:
                        chain.append(record.value)
                    else:
                        appended[key] = None
                touched_requests[key] = folded_r
                found = event_alerts(request, folded_r, when, self.policy, self.days, self.unit)
                alerts.add(key, found)
                latest[(False, key)] = max(when, latest.get((False, key), when))
        # the next deadline of each state the batch changed, once per state: crossings
        # before its events' times were found above (`event_alerts`, as of each event)
        for (customer, key), when in latest.items():
            state = (touched_customers if customer else touched_requests)[key]
            self._schedule(customer, key, state, when)
        encoded = {
            key: self._record(state, request_json(state, stored[key], chain))
            for key, state in touched_requests.items()
            if (chain := appended[key]) is not None
        }
        await self._write(alerts, touched_requests, touched_customers, encoded)

    def _record(self, state: RequestState, state_json: bytes) -> bytes:
        """A request's changelog record: its JSON, with what the API's indexes read off
        it taken here, where the state is in hand (`projections.records`)."""
        try:
            return request_record(state, state_json, self.policy, self.part_tag)
        except Exception:  # noqa: BLE001 - what the API reads of it is optional, the state not
            log.exception("request %s: its record goes without its part", state.request_id)
            return state_json  # the API takes the part from the state, as for an old record

    def _schedule(self, customer: bool, key: bytes, state: Any, after: datetime) -> None:
        """Index the state's next deadline after `after` (None: none until a new event)."""
        at = next_check(state, after, self.policy, self.days, self.unit)
        self.due.put(customer, key, at)

    async def _write(
        self,
        alerts: _Raising,
        requests: dict[bytes, Any],
        customers: dict[bytes, Any],
        encoded: dict[bytes, bytes] | None = None,
    ) -> None:
        await self.processor.fence()  # nothing written once the partitions moved
        out = [
            Outgoing(self.topics.alerts, a["subject_id"].encode(), orjson.dumps(a))
            for a in alerts.alerts
        ]
        await send_all(self.producer, out)  # alerts are out before they are recorded raised
        raised = alerts.changed_values()
        await write_tables(
            self.producer,
            [(self.requests, requests), (self.customers, customers), (self.raised, raised)],
            {self.requests.name: encoded or {}},
        )

    # -- the timer -------------------------------------------------------------------
    def live(self, partition: int, now: datetime) -> bool:
        """Whether a partition's newest event is recent: live traffic, not a replay."""
        seen = self.stream_time.get(partition)
        return seen is not None and now - seen <= REPLAY_LAG

    async def check(self) -> int:
        """Raise what the due states call for as of now; return how many were new.

        A partition is judged as of now only once its log has been handled to the end
        (or its traffic is live): half-way through replaying history, a state is not
        yet what it will be by "now", and would raise crossings that never happened;
        its due states wait for the next tick, unread. The due states are checked
        `CHECK_SLICE` at a time, the stream's lock let go in between: a partition taken
        over has every state due at once, and the stream must not wait for them all.
        """
        now = self.settings.now()
        raised = 0
        waiting: list[tuple[bool, bytes]] = []
        if self.sweep:
            async with self.processor.lock:
                self._sweep(await self.processor.caught_up(), now)
        due = self.due.pop_due(now)
        for start in range(0, max(len(due), 1), CHECK_SLICE):
            async with self.processor.lock:
                ready = await self.processor.caught_up()
                alerts = _Raising(self.raised)
                for customer, key in due[start : start + CHECK_SLICE]:
                    table = self.customers if customer else self.requests
                    partition = table.partition(key)
                    if not (partition in ready or self.live(partition, now)):
                        waiting.append((customer, key))
                        continue
                    state = self._at_hand(customer, key, now)
                    if state is None:  # its partition went to another worker
                        continue
                    if customer:
                        alerts.add(key, customer_alerts(state, now, self.policy))
                    else:
                        found = request_alerts(state, now, self.policy, self.days, self.unit)
                        alerts.add(key, found)
                    self._schedule(customer, key, state, now)
                if alerts.alerts:
                    await self._write(alerts, {}, {})
                raised += len(alerts.alerts)
            await asyncio.sleep(0)  # the stream's turn
        for customer, key in waiting:
            self.due.put(customer, key, EVER)
        return raised

    def _at_hand(self, customer: bool, key: bytes, now: datetime) -> Any:
        """A due state, to check as of `now`: kept as objects; else a request's facts
        read off its stored JSON (`projections.state.request_facts`: the timer parsed
        every due state back with pydantic, a quarter of a replay's CPU at 1 M events),
        when they hold as of now; else parsed."""
        table = self.customers if customer else self.requests
        state = table.kept(key)
        if state is not None:
            return state
        if not customer and (raw := table.stored(key)) is not None:
            try:
                facts = request_facts(record_head(raw))
            except (KeyError, TypeError, ValueError, IndexError):
                facts = None  # not of this version's shape: parsed (and judged) whole
            if facts is not None and facts.newest_at <= now:
                return facts
        return table.get(key)

    async def run_timer(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.alert_interval)
            except TimeoutError:
                try:
                    await self.check()
                except Fenced:  # the partitions are moving: their new owner checks them
                    log.info("alert check left to the partitions' new owner")


EVER = datetime.min.replace(tzinfo=UTC)  # due at once


class DeadlineIndex:
    """States by the instant they next need a check: a heap, stale entries skipped."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, bool, bytes]] = []
        self._at: dict[tuple[bool, bytes], datetime] = {}

    def put(self, customer: bool, key: bytes, at: datetime | None) -> None:
        if at is None:
            self._at.pop((customer, key), None)
            return
        if self._at.get((customer, key)) != at:
            self._at[(customer, key)] = at
            heapq.heappush(self._heap, (at, customer, key))

    def pop_due(self, now: datetime) -> list[tuple[bool, bytes]]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            at, customer, key = heapq.heappop(self._heap)
            if self._at.get((customer, key)) == at:  # not superseded by a later put
                del self._at[(customer, key)]
                due.append((customer, key))
        return due

    def __len__(self) -> int:
        return len(self._at)


class _Raising:
    """Alerts found in one batch or tick, each crossing once."""

    def __init__(self, raised: Table) -> None:
        self._table = raised
        self.raised: dict[bytes, set[str]] = {}
        self.changed: set[bytes] = set()
        self.alerts: list[Alert] = []

    def add(self, key: bytes, candidates: list[Alert]) -> None:
        if not candidates:
            return
        raised = self.raised.get(key)
        if raised is None:
            raised = self.raised[key] = set(self._table.get(key) or ())
        for alert in new_alerts(candidates, raised):
            raised.add(alert["alert_id"])
            self.alerts.append(alert)
            self.changed.add(key)

    def changed_values(self) -> dict[bytes, Any]:
        return {key: sorted(self.raised[key]) for key in self.changed}


def _codec(model: Any) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    """A state model's changelog form: its JSON, parsed and validated by pydantic."""

    def dump(state: Any) -> bytes:
        return cast(bytes, state.model_dump_json().encode())

    return model.model_validate_json, dump
