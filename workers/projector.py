"""The projector: ledger.events -> request and customer states in changelogged tables.

Both tables are keyed like `ledger.events` (raw request_id / customer_id bytes), so they
are co-partitioned with it. Each batch decodes every event once, folds it with the pure
`projections` folds, and writes each touched key once. The folds are idempotent by
event_id, so a redelivered batch (after a crash or a rebalance) changes nothing.
"""

from __future__ import annotations

from typing import Any

import faust

from events import InvalidEvent, decode
from ledger.config import Settings
from ledger.topics import Topics
from projections.state import CustomerState, RequestState, apply_customer, apply_request
from workers.tables import json_table, write_batch

BATCH_WINDOW_S = 0.05


def table_names(prefix: str) -> tuple[str, str]:
    return f"{prefix}projector-requests", f"{prefix}projector-customers"


def register_projector(app: faust.App, topics: Topics, settings: Settings) -> None:
    prefix = settings.topic_prefix
    events = app.topic(topics.events, key_serializer="raw", value_serializer="raw")
    requests_name, customers_name = table_names(prefix)
    requests = json_table(app, requests_name, settings.partitions)
    customers = json_table(app, customers_name, settings.partitions)

    @app.agent(events, name=f"{prefix}projector")
    async def project(stream: Any) -> None:  # Any: faust's StreamT stub lacks take_events
        async for batch in stream.take_events(settings.batch_size, within=BATCH_WINDOW_S):
            touched_requests: dict[bytes, RequestState] = {}
            touched_customers: dict[bytes, CustomerState] = {}
            for item in batch:
                try:
                    event = decode(item.value)
                except InvalidEvent:
                    continue  # cannot happen: only the validator writes ledger.events
                if event.type == "escalation":
                    key = event.data.customer_id.encode()
                    customer = touched_customers.get(key) or _load(customers, key, CustomerState)
                    folded_c = apply_customer(customer, event)
                    if folded_c is not None and folded_c is not customer:
                        touched_customers[key] = folded_c
                    continue
                key = event.data.request_id.encode()
                request = touched_requests.get(key) or _load(requests, key, RequestState)
                folded_r = apply_request(request, event)
                if folded_r is not None and folded_r is not request:
                    touched_requests[key] = folded_r
            await write_batch(app, requests, _dump(touched_requests))
            await write_batch(app, customers, _dump(touched_customers))


def _load(table: Any, key: bytes, model: Any) -> Any:
    raw = table.data.get(key)
    return None if raw is None else model.model_validate(raw)


def _dump(states: dict[bytes, Any]) -> dict[bytes, Any]:
    return {key: state.model_dump(mode="json") for key, state in states.items()}
