"""The projector: ledger.events -> request and customer states, and the alerts they raise.

Its tables are keyed like `ledger.events` (raw request_id / customer_id bytes), so they
are co-partitioned with it. Each batch decodes every event once, folds it with the pure
`projections` folds, and writes each touched key once. The folds are idempotent by
event_id, so a redelivered batch (after a crash or a rebalance) changes nothing.

Alerting (CONTRACT section 6) runs here too, on the states this worker owns:
- on every event, the request *before* the event is checked as of the event's time
  (a request decided on day 12 had crossed its deadline on day 10), and the customer
  after an escalation;
- after every batch and on a timer (`LEDGER_ALERT_INTERVAL`), the owned states are
  checked as of now (`LEDGER_CLOCK` or the wall clock).
Each crossing has a stable `alert_id`; the ids already raised live in a changelogged
table keyed by subject, so a restarted or rebalanced worker does not raise them again.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import faust
import orjson

from events import InvalidEvent, decode
from ledger.config import Settings
from ledger.kafka import Outgoing
from ledger.policy import load_policy
from ledger.topics import Topics
from projections.alerts import (
    Alert,
    customer_alerts,
    event_alerts,
    new_alerts,
    request_alerts,
)
from projections.state import CustomerState, RequestState, apply_customer, apply_request
from workers.tables import (
    each_batch,
    json_table,
    owned_items,
    send_all,
    write_batch,
)

BATCH_WINDOW_S = 0.05
IDLE_S = 3.0  # no batch for this long: the worker has caught up
REPLAY_LAG = timedelta(hours=1)


def table_names(prefix: str) -> tuple[str, str]:
    return f"{prefix}projector-requests", f"{prefix}projector-customers"


class _Batch:
    """What one batch (or one timer tick) touched, written once at its end."""

    def __init__(self, raised: Any) -> None:
        self._raised_table = raised
        self.requests: dict[bytes, RequestState] = {}
        self.customers: dict[bytes, CustomerState] = {}
        self.raised: dict[bytes, set[str]] = {}
        self.changed: set[bytes] = set()  # subjects with newly raised alerts
        self.alerts: list[Alert] = []

    def raise_new(self, key: bytes, candidates: list[Alert]) -> None:
        if not candidates:
            return
        raised = self.raised.get(key)
        if raised is None:
            stored = self._raised_table.data.get(key)
            raised = self.raised[key] = set(stored or ())
        for alert in new_alerts(candidates, raised):
            raised.add(alert["alert_id"])
            self.alerts.append(alert)
            self.changed.add(key)


def register_projector(app: faust.App, topics: Topics, settings: Settings) -> None:
    prefix = settings.topic_prefix
    events = app.topic(topics.events, key_serializer="raw", value_serializer="raw")
    requests_name, customers_name = table_names(prefix)
    requests = json_table(app, requests_name, settings.partitions)
    customers = json_table(app, customers_name, settings.partitions)
    raised = json_table(app, f"{prefix}alerts-raised", settings.partitions)
    policy = load_policy(settings.policy_file)
    days, unit = settings.overdue_days, settings.overdue_unit
    lock = asyncio.Lock()  # the agent and the timer never raise concurrently

    def at(moment: datetime) -> datetime:
        return min(moment, settings.now())

    async def finish(batch: _Batch) -> None:
        alerts = [
            Outgoing(topics.alerts, a["subject_id"].encode(), orjson.dumps(a)) for a in batch.alerts
        ]
        await send_all(app, alerts)  # alerts are out before they are recorded as raised
        await write_batch(app, requests, _dump(batch.requests))
        await write_batch(app, customers, _dump(batch.customers))
        await write_batch(app, raised, {k: sorted(batch.raised[k]) for k in batch.changed})

    stream_time: dict[int, datetime] = {}  # newest event time seen, per partition
    last_batch = [0.0]  # monotonic time of the last batch

    async def project_batch(items: list[Any]) -> None:
        async with lock:
            batch = _Batch(raised)
            for item in items:
                try:
                    event = decode(item.value)
                except InvalidEvent:
                    continue  # cannot happen: only the validator writes ledger.events
                partition = item.message.partition
                seen = stream_time.get(partition)
                if seen is None or event.occurred_at > seen:
                    stream_time[partition] = event.occurred_at
                when = at(event.occurred_at)
                if event.type == "escalation":
                    key = event.data.customer_id.encode()
                    customer = batch.customers.get(key) or _load(customers, key, CustomerState)
                    folded_c = apply_customer(customer, event)
                    if folded_c is not None and folded_c is not customer:
                        batch.customers[key] = folded_c
                        found = event_alerts(None, folded_c, when, policy, days, unit)
                        batch.raise_new(key, found)
                    continue
                key = event.data.request_id.encode()
                request = batch.requests.get(key) or _load(requests, key, RequestState)
                folded_r = apply_request(request, event)
                if folded_r is not None and folded_r is not request:
                    batch.requests[key] = folded_r
                    found = event_alerts(request, folded_r, when, policy, days, unit)
                    batch.raise_new(key, found)
            await finish(batch)
            last_batch[0] = time.monotonic()

    @app.agent(events, name=f"{prefix}projector")
    async def project(stream: Any) -> None:  # Any: faust's StreamT stub lacks noack_take
        await each_batch(stream, settings.batch_size, BATCH_WINDOW_S, project_batch)

    def as_of_for(partition: int, now: datetime) -> datetime:
        """Now, unless this worker is replaying history (busy, and its events are older
        than an hour): then the partition's stream time, so that a state half-way
        through its history is not judged as of a "now" its later events have not
        reached yet."""
        busy = time.monotonic() - last_batch[0] < IDLE_S
        seen = stream_time.get(partition)
        if busy and seen is not None and now - seen > REPLAY_LAG:
            return seen
        return now

    @app.timer(settings.alert_interval, name=f"{prefix}alert-timer")  # type: ignore[untyped-decorator]
    async def check_overdue() -> None:
        async with lock:
            batch = _Batch(raised)
            now = settings.now()
            for partition, key, raw in owned_items(app, requests, topics.events):
                state = RequestState.model_validate(raw)
                found = request_alerts(state, as_of_for(partition, now), policy, days, unit)
                batch.raise_new(key, found)
            for partition, key, raw in owned_items(app, customers, topics.events):
                customer = CustomerState.model_validate(raw)
                batch.raise_new(key, customer_alerts(customer, as_of_for(partition, now), policy))
            if batch.alerts:
                await finish(batch)


def _load(table: Any, key: bytes, model: Any) -> Any:
    raw = table.data.get(key)
    return None if raw is None else model.model_validate(raw)


def _dump(states: dict[bytes, Any]) -> dict[bytes, Any]:
    return {key: state.model_dump(mode="json") for key, state in states.items()}
