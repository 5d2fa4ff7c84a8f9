"""/health's counts are kept as changelog records arrive, and equal the parsed states'."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import ledger.api.readmodel as readmodel
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


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_events_folded_and_counts_follow_every_record(store: str, tmp_path: Path) -> None:
    events = generate(requests=60, until=datetime.fromisoformat("2026-06-30T09:00:00+00:00"))
    model = ReadModel(Settings(store=store, data_dir=tmp_path), "127.0.0.1:1")
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
    bigger = folded.requests[first.key.decode()]
    smaller = bigger.model_copy(update={"history": bigger.history[:1]})
    model._apply(model.requests_topic, [Record(first.key, smaller.model_dump_json().encode())])  # noqa: SLF001
    model._apply(model.requests_topic, [Record(second.key, None)])  # noqa: SLF001
    expected = sum(len(s.event_ids) for s in [*model.requests(), *model.customers()])
    assert model.events_folded() == expected < parsed
    assert model.counts() == (len(folded.requests) - 1, len(folded.customers))
    assert model.request(first.key.decode()) == smaller
    assert model.request(second.key.decode()) is None
    assert sorted(s.request_id for s in model.requests()) == sorted(
        k for k in folded.requests if k != second.key.decode()
    )
    scratch = tmp_path / "api"
    if store == "rocksdb":  # the states' JSON on this process's own RocksDB, not in memory
        assert not isinstance(model._caches[model.requests_topic].raw, dict)  # noqa: SLF001
        assert any(scratch.rglob("*.sst")) or any(scratch.rglob("*.log"))
        for disk in model._disks:  # noqa: SLF001 - as `run` does when it stops
            disk.close()
        assert not any(p.is_file() for p in scratch.rglob("*"))
    else:
        assert not scratch.exists()


def test_the_api_keeps_only_the_most_recently_asked_states_parsed() -> None:
    """A walk over every state (a list, a report, an `as_of` in the past) must not leave
    every state's objects behind: the API's memory grows with the JSON it holds."""
    events = generate(requests=60, until=datetime.fromisoformat("2026-06-30T09:00:00+00:00"))
    model = ReadModel(Settings(api_cache_states=10), "127.0.0.1:1")
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


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_catching_up_indexes_each_request_once_at_its_newest(
    store: str, tmp_path: Path
) -> None:
    """A read model catching up (a second API, a restart) reads a changelog record per
    event a request folded: it indexes each request once, when it reaches the end, and the
    lists are the ones indexing every record one by one would have built."""
    events = [
        from_mapping(e)
        for e in generate(requests=80, until=datetime.fromisoformat("2026-06-30T09:00:00+00:00"))
    ]
    records: list[Record] = []  # each request's state after each of its events, in log order
    states: dict[str, object] = {}
    from projections.state import apply_request

    for event in events:
        if event.type == "escalation":
            continue
        key = event.data.request_id
        state = apply_request(states.get(key), event)  # type: ignore[arg-type]
        states[key] = state
        records.append(Record(key.encode(), state.model_dump_json().encode()))  # type: ignore[union-attr]
    records.append(Record(records[0].key, None))  # one request gone again
    assert len(records) > 2 * len(states)

    one_by_one = ReadModel(Settings(), "127.0.0.1:1")
    one_by_one._apply(one_by_one.requests_topic, records)  # noqa: SLF001

    catching_up = ReadModel(Settings(store=store, data_dir=tmp_path), "127.0.0.1:1")
    catching_up._catching_up = True  # noqa: SLF001 - as `run` starts
    read: list[dict[str, object]] = []
    entry = catching_up.index.entry_parsed

    def counted(state: dict[str, object]):  # type: ignore[no-untyped-def]
        read.append(state)
        return entry(state)

    catching_up.index.entry_parsed = counted  # type: ignore[method-assign]
    catching_up._apply(catching_up.requests_topic, records)  # noqa: SLF001
    assert read == [] and catching_up.index.entries == {}
    await catching_up._index_caught_up()  # noqa: SLF001
    assert len(read) == len(states) - 1  # each request once; the one gone not at all

    for index in (catching_up.index, one_by_one.index):
        assert index.entries == one_by_one.index.entries
    a, b = catching_up.index, one_by_one.index
    assert (a.open, a.decision_due, a.hold_due, a.revisit_on, a.review_on, a.newest_at) == (
        b.open, b.decision_due, b.hold_due, b.revisit_on, b.review_on, b.newest_at
    )  # fmt: skip
    assert a.open and a.decision_due

    # caught up, a record is indexed as it comes
    catching_up._apply(catching_up.requests_topic, [Record(records[1].key, None)])  # noqa: SLF001
    assert records[1].key.decode() not in a.entries  # type: ignore[union-attr]
    for disk in catching_up._disks:  # noqa: SLF001 - as `run` does when it stops
        disk.close()


def test_a_long_pipeline_is_built_in_slices_without_keeping_its_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole pipeline (more rows than a small page) is read a slice of states at a
    time, off the event loop, none of them kept parsed: ten whole lists at once must not
    hold ten copies of every open request, nor push out the states kept for lookups."""
    from ledger.api import app
    from ledger.api.app import pipeline_rows
    from ledger.rules.policy import Policy
    from projections import views

    until = datetime.fromisoformat("2026-06-30T09:00:00+00:00")
    monkeypatch.setattr(app, "SMALL_PAGE", 40)
    events = generate(requests=400, until=until)
    model = ReadModel(Settings(api_cache_states=50), "127.0.0.1:1")
    folded = fold(from_mapping(e) for e in events)
    model._apply(  # noqa: SLF001
        model.requests_topic,
        [Record(k.encode(), s.model_dump_json().encode()) for k, s in folded.requests.items()],
    )
    kept = next(iter(folded.requests))
    model.request(kept)
    parsed = model._caches[model.requests_topic].parsed  # noqa: SLF001
    before = list(parsed)

    ids = [request_id for _, request_id in model.index.open]
    assert len(ids) > 2 * 40  # several slices
    rows = pipeline_rows(model, ids, until, Policy())
    assert rows == views.pipeline(folded.requests.values(), until, Policy())
    assert list(parsed) == before == [kept]


def test_a_pipeline_of_the_projectors_records_is_built_without_parsing_a_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the assessment the projector writes into each record, a whole pipeline (and a
    page of it) comes from the index's entries: no state parsed (ten whole lists of 22 k
    rows each parsed every open request, for seconds, holding the GIL /health waits on)."""
    from ledger.api.app import pipeline_rows
    from ledger.rules.policy import Policy
    from projections import views
    from projections.records import policy_tag, request_record
    from projections.state import RequestState

    until = datetime.fromisoformat("2026-06-30T09:00:00+00:00")
    folded = fold(from_mapping(e) for e in generate(requests=300, until=until))
    model = ReadModel(Settings(), "127.0.0.1:1")
    tag = policy_tag(Policy())
    records = [
        Record(k.encode(), request_record(s, s.model_dump_json().encode(), Policy(), tag))
        for k, s in folded.requests.items()
    ]

    def refused(*_: object) -> None:
        raise AssertionError("a state was parsed into objects")

    monkeypatch.setattr(RequestState, "model_validate_json", refused)
    model._apply(model.requests_topic, records)  # noqa: SLF001
    ids = [request_id for _, request_id in model.index.open]
    for as_of in (until, until + timedelta(days=20)):
        want = views.pipeline(folded.requests.values(), as_of, Policy())
        assert pipeline_rows(model, ids, as_of, Policy()) == want and len(want) > 40
        assert pipeline_rows(model, ids[:5], as_of, Policy()) == want[:5]


def test_a_walk_over_every_state_parses_as_it_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`requests()` is handed to a view that runs in a thread: asking for it parses
    nothing on the event loop; iterating it parses each state then, every pass afresh."""
    from projections.state import RequestState

    events = generate(requests=30, until=datetime.fromisoformat("2026-06-30T09:00:00+00:00"))
    model = ReadModel(Settings(), "127.0.0.1:1")
    folded = fold(from_mapping(e) for e in events)
    model._apply(  # noqa: SLF001
        model.requests_topic,
        [Record(k.encode(), s.model_dump_json().encode()) for k, s in folded.requests.items()],
    )
    parse = RequestState.model_validate_json
    parses: list[bytes] = []

    def counted(raw: bytes) -> RequestState:
        parses.append(raw)
        return parse(raw)

    monkeypatch.setattr(RequestState, "model_validate_json", counted)
    walk = model.requests()
    assert parses == [] and len(walk) == len(folded.requests)  # type: ignore[arg-type]
    assert sorted(s.request_id for s in walk) == sorted(folded.requests)
    assert len(parses) == len(folded.requests)
    gone = next(iter(folded.requests))
    model._apply(model.requests_topic, [Record(gone.encode(), None)])  # noqa: SLF001
    assert gone not in {s.request_id for s in walk}  # a second pass reads afresh


def test_alerts_are_newest_first_by_instant_whatever_their_offsets() -> None:
    """An alert's `raised_at` carries the offset of the event that raised it: sorted as
    text, 10:00+08:00 (02:00Z) came before 09:00Z among the newest."""
    model = ReadModel(Settings(), "127.0.0.1:1")
    raised = ["2026-03-02T10:00:00+08:00", "2026-03-02T09:00:00+00:00",
              "2026-03-02T05:00:00-05:00", "not an instant"]  # fmt: skip
    for n, at in enumerate(raised):
        model.alerts[f"a{n}"] = {"alert_id": f"a{n}", "raised_at": at}
    newest = [a["raised_at"] for a in model.recent_alerts([])]
    assert newest == ["2026-03-02T05:00:00-05:00", "2026-03-02T09:00:00+00:00",
                      "2026-03-02T10:00:00+08:00", "not an instant"]  # fmt: skip


def test_a_batch_applies_each_requests_newest_record_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a replay the projector writes a record per batch that touched a request, often
    several within one of the API's batches: the read model is the newest's, and each
    request is read and indexed once per batch, not once per record."""
    events = generate(requests=40, until=datetime.fromisoformat("2026-06-30T09:00:00+00:00"))
    folded = fold(from_mapping(e) for e in events)
    growing = [  # each request's state after each of its events, in the log's order
        Record(
            k.encode(), s.model_copy(update={"history": s.history[:n]}).model_dump_json().encode()
        )
        for n in range(1, 4)
        for k, s in folded.requests.items()
        if len(s.history) >= n
    ]
    assert len(growing) > len(folded.requests) + 20
    heads: list[bytes] = []
    real = readmodel.record_head
    monkeypatch.setattr(readmodel, "record_head", lambda raw: heads.append(raw) or real(raw))
    model = ReadModel(Settings(data_dir=tmp_path), "127.0.0.1:1")
    model._catching_up = False  # noqa: SLF001 - live: each record indexed as it comes
    model._apply(model.requests_topic, growing)  # noqa: SLF001

    assert len(heads) == len(folded.requests)
    newest = {
        k: s.model_copy(update={"history": s.history[:3]}) for k, s in folded.requests.items()
    }
    assert {s.request_id: s for s in model.requests()} == newest
    assert model.events_folded() == sum(len(s.event_ids) for s in newest.values())
