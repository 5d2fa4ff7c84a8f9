"""The decision metrics kept as request states change (issue 11) answer what a refold of
every state answers, however the states changed on the way."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from events import from_mapping
from ledger.adapters.config import Settings
from ledger.api.readmodel import ReadModel
from ledger.entrypoints.history import generate
from ledger.rules.policy import Policy
from projections import Folded
from projections.metricsindex import Counter, percentile
from projections.views import metrics
from projections.views import percentile as list_percentile

UNTIL = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


def test_totals_kept_as_states_change_equal_a_refold() -> None:
    """Every state change goes to the read model as the changelog would carry it, and the
    metrics are asked midway, so parts are taken, then taken away and replaced."""
    model = ReadModel(Settings(), "127.0.0.1:1")
    folded = Folded()
    raws = generate(requests=300, until=UNTIL, seed=5)
    for n, raw in enumerate(raws):
        event = from_mapping(raw)
        folded.apply(event)
        if event.type != "escalation":
            state = folded.requests[event.data.request_id]
            record = Record(state.request_id.encode(), state.model_dump_json().encode())
            model._apply(model.requests_topic, [record])  # noqa: SLF001
        if n % 97 == 0:
            asyncio.run(model.metrics(UNTIL + timedelta(days=400)))
    states = list(folded.requests.values())
    for as_of in (UNTIL, UNTIL + timedelta(days=40), UNTIL + timedelta(days=400)):
        want = metrics(states, as_of, Policy())
        assert asyncio.run(model.metrics(as_of)) == want
        assert want["decisions"] and want["pilot_success_rate"] is not None
    assert want["declined_partners"] and want["support_asks_answered"]
    # before the newest event the totals do not answer: the API refolds
    assert asyncio.run(model.metrics(UNTIL - timedelta(days=30))) is None

    # requests that go take their parts with them
    for request_id in list(folded.requests)[:150]:
        model._apply(model.requests_topic, [Record(request_id.encode(), None)])  # noqa: SLF001
    rest = list(folded.requests.values())[150:]
    assert asyncio.run(model.metrics(UNTIL)) == metrics(rest, UNTIL, Policy())
    for request_id in list(folded.requests)[150:]:
        model._apply(model.requests_topic, [Record(request_id.encode(), None)])  # noqa: SLF001
    empty = asyncio.run(model.metrics(UNTIL))
    assert empty is not None and empty["decisions"] == 0 and empty["by_outcome"] == {}
    assert model.totals.partners == {} and model.totals.pilots_closing == []


def test_a_percentile_of_counts_is_the_percentile_of_the_values() -> None:
    for values in ([3], [1, 2], [5, 1, 1, 9, 2, 2, 2, 40], list(range(11)) * 3):
        for q in (0.0, 0.1, 0.5, 0.9, 1.0):
            assert percentile(Counter(values), q) == list_percentile(values, q)
    assert percentile(Counter(), 0.5) is None
