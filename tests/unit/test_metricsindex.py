"""The decision metrics kept as request states change (issue 11) answer what a refold of
every state answers, however the states changed on the way."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
import pytest

from events import from_mapping
from ledger.adapters.config import Settings
from ledger.api.readmodel import ReadModel
from ledger.entrypoints.history import generate
from ledger.rules.policy import Policy
from projections import Folded
from projections.metricsindex import (
    PART_KEY,
    Counter,
    _reckoned,
    part_from,
    part_of,
    percentile,
    policy_tag,
    with_part,
)
from projections.state import RequestState
from projections.views import metrics
from projections.views import percentile as list_percentile

UNTIL = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


def shipped(state: RequestState, policy: Policy | None = None) -> bytes:
    """A request's changelog record as the projector writes it: with its part."""
    policy = policy or Policy()
    return with_part(state.model_dump_json().encode(), part_of(state, policy), policy_tag(policy))


@pytest.mark.parametrize("regional", [False, True], ids=["utc", "crm-offsets"])
@pytest.mark.parametrize("with_parts", [True, False], ids=["parts-shipped", "parts-taken-here"])
def test_totals_kept_as_states_change_equal_a_refold(with_parts: bool, regional: bool) -> None:
    """Every state change goes to the read model as the changelog would carry it, and the
    metrics are asked midway, so parts are taken, then taken away and replaced; with the
    parts the projector writes into its records, and without (records of an older
    version: the read model takes each part from the state itself); with instants in UTC
    and in each CRM's own offset."""
    model = ReadModel(Settings(), "127.0.0.1:1")
    folded = Folded()
    raws = generate(requests=300, until=UNTIL, seed=5, regional=regional)
    for n, raw in enumerate(raws):
        event = from_mapping(raw)
        folded.apply(event)
        if event.type != "escalation":
            state = folded.requests[event.data.request_id]
            value = shipped(state) if with_parts else state.model_dump_json().encode()
            record = Record(state.request_id.encode(), value)
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


@pytest.mark.parametrize("regional", [False, True], ids=["utc", "crm-offsets"])
def test_a_part_taken_at_once_is_the_part_reckoned(regional: bool) -> None:
    """Every state a log passes through (intakes, scores, decisions, revisits, partners
    and support asks among them) has the part the whole reckoning gives it, the states
    with no decision and no revisit (`part_of`'s shortcut) among them."""
    folded = Folded()
    shortcut = 0
    for raw in generate(requests=400, until=UNTIL, seed=8, regional=regional):
        event = from_mapping(raw)
        folded.apply(event)
        if event.type == "escalation":
            continue
        state = folded.requests[event.data.request_id]
        assert part_of(state, Policy()) == _reckoned(state, Policy()), state.request_id
        shortcut += not state.decisions and not state.revisits
    assert shortcut > 400  # intakes and scores at least


def test_a_percentile_of_counts_is_the_percentile_of_the_values() -> None:
    for values in ([3], [1, 2], [5, 1, 1, 9, 2, 2, 2, 40], list(range(11)) * 3):
        for q in (0.0, 0.1, 0.5, 0.9, 1.0):
            assert percentile(Counter(values), q) == list_percentile(values, q)
    assert percentile(Counter(), 0.5) is None


def test_a_part_read_back_from_a_record_is_the_part_taken() -> None:
    """The part in a record (`with_part`) reads back equal to the state's own, under the
    policy it was taken with only; a record without one, or with one this version cannot
    read, gives none (the read model then takes the part from the state)."""
    policy = Policy()
    tag = policy_tag(policy)
    folded = Folded()
    for raw in generate(requests=300, until=UNTIL, seed=11):
        folded.apply(from_mapping(raw))
    parts = [part_of(s, policy) for s in folded.requests.values()]
    assert any(p.pilots_closing for p in parts) and any(p.declines for p in parts)
    assert any(p.to_revisit for p in parts) and any(p.support_days is not None for p in parts)
    for state, part in zip(folded.requests.values(), parts, strict=True):
        record = shipped(state, policy)
        assert RequestState.model_validate_json(record) == state  # the state ignores it
        assert part_from(orjson.loads(record), tag) == part
        assert part_from(orjson.loads(record), "another policy") is None
        assert part_from(orjson.loads(state.model_dump_json()), tag) is None
    other = Policy.model_validate({"decisions": {"pilot_success_days": 7}})
    assert policy_tag(other) != tag
    good = orjson.loads(shipped(next(iter(folded.requests.values())), policy))
    for broken in ([tag], [tag, *good[PART_KEY][1:-1], "x"], "text", None,
                   [tag, 5, *good[PART_KEY][2:]]):  # fmt: skip
        assert part_from({**good, PART_KEY: broken}, tag) is None
    assert part_from([], tag) is None  # type: ignore[arg-type]


def test_metrics_are_summed_from_the_shipped_parts_without_parsing_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read model that receives the projector's records sums the metrics as they come,
    never parsing a state into objects (a replay's first metrics query summed every
    request that way: ~120 us each, a minute at a million events); a part taken under
    another policy than the read model's is not used: the state's own is taken."""
    folded = Folded()
    for raw in generate(requests=200, until=UNTIL, seed=3):
        folded.apply(from_mapping(raw))
    states = list(folded.requests.values())
    want = metrics(states, UNTIL, Policy())
    model = ReadModel(Settings(), "127.0.0.1:1")
    records = [Record(s.request_id.encode(), shipped(s)) for s in states]

    def refused(*_: object) -> None:
        raise AssertionError("a state was parsed into objects")

    with monkeypatch.context() as patch:
        patch.setattr(RequestState, "model_validate_json", refused)
        model._apply(model.requests_topic, records)  # noqa: SLF001
        assert not model._unsummed  # noqa: SLF001 - summed as they came
        assert asyncio.run(model.metrics(UNTIL)) == want

    other = Policy.model_validate({"decisions": {"pilot_success_days": 7}})
    foreign = [Record(s.request_id.encode(), shipped(s, other)) for s in states]
    model = ReadModel(Settings(), "127.0.0.1:1")
    model._apply(model.requests_topic, foreign)  # noqa: SLF001
    assert asyncio.run(model.metrics(UNTIL)) == want
    assert metrics(states, UNTIL, other) != want  # the other policy's parts would differ
