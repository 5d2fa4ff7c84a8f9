"""/health's counts are kept as changelog records arrive, and equal the parsed states'."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from events import from_mapping
from ledger.adapters.config import Settings
from ledger.api.readmodel import ReadModel
from ledger.entrypoints.history import generate
from projections import fold


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


def test_events_folded_and_counts_follow_every_record() -> None:
    events = generate(requests=60, until=datetime.fromisoformat("2026-06-30T09:00:00+00:00"))
    model = ReadModel(Settings(), "127.0.0.1:1")
    folded = fold(from_mapping(e) for e in events)
    requests = [
        Record(k.encode(), s.model_dump_json().encode()) for k, s in folded.requests.items()
    ]
    customers = [
        Record(k.encode(), s.model_dump_json().encode()) for k, s in folded.customers.items()
    ]
    model._apply(model.requests_topic, requests)  # noqa: SLF001
    model._apply(model.customers_topic, customers)  # noqa: SLF001
    parsed = sum(len(s.event_ids) for s in [*model.requests(), *model.customers()])
    assert (
        model.events_folded()
        == parsed
        == sum(len(s.event_ids) for s in [*folded.requests.values(), *folded.customers.values()])
    )
    assert model.counts() == (len(folded.requests), len(folded.customers))

    # a newer state of a key replaces the older one's count; a tombstone removes it
    first, second = requests[0], requests[1]
    smaller = folded.requests[first.key.decode()].model_copy(update={"event_ids": frozenset()})
    model._apply(model.requests_topic, [Record(first.key, smaller.model_dump_json().encode())])  # noqa: SLF001
    model._apply(model.requests_topic, [Record(second.key, None)])  # noqa: SLF001
    expected = sum(len(s.event_ids) for s in [*model.requests(), *model.customers()])
    assert model.events_folded() == expected < parsed
    assert model.counts() == (len(folded.requests) - 1, len(folded.customers))


def test_the_api_keeps_only_the_most_recently_asked_states_parsed() -> None:
    """A walk over every state (a list, a report, an `as_of` in the past) must not leave
    every state's objects behind: the API's memory grows with the JSON it holds."""
    events = generate(requests=60, until=datetime.fromisoformat("2026-06-30T09:00:00+00:00"))
    model = ReadModel(Settings(cache_states=10), "127.0.0.1:1")
    folded = fold(from_mapping(e) for e in events)
    model._apply(  # noqa: SLF001
        model.requests_topic,
        [Record(k.encode(), s.model_dump_json().encode()) for k, s in folded.requests.items()],
    )
    parsed = model._caches[model.requests_topic].parsed  # noqa: SLF001
    assert sorted(model.requests(), key=lambda s: s.request_id) == sorted(
        folded.requests.values(), key=lambda s: s.request_id
    )
    assert len(parsed) == 0  # a walk parses for itself
    for request_id, state in folded.requests.items():
        assert model.request(request_id) == state
        assert len(parsed) <= 10
    assert list(parsed)[-1] == list(folded.requests)[-1]  # the last asked is kept
