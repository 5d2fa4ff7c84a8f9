"""A request's changelog record (`projections.records`): what the API's indexes and the
alert timer read of it is all before its history, which they no longer parse."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone

import orjson
from hypothesis import given
from hypothesis import strategies as st

from events import from_mapping
from ledger.entrypoints.history import generate
from ledger.rules.policy import Policy
from projections import Folded
from projections.listindex import entry_of
from projections.metricsindex import part_from, part_of, policy_tag
from projections.records import request_record
from projections.state import (
    LEAN_KEY,
    NEWEST_KEY,
    RequestState,
    apply_request,
    head_json,
    newest_event_at,
    newest_of,
    record_head,
    request_facts,
    request_from_json,
    request_json,
    with_newest,
)

POLICY = Policy()
TAG = policy_tag(POLICY)
UNTIL = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


def folded_states(**overrides: object) -> list[RequestState]:
    folded = Folded()
    for raw in generate(requests=300, until=UNTIL, seed=5):
        if raw["type"] == "intake" and overrides:
            raw = {**raw, "data": {**raw["data"], **overrides}}
        folded.apply(from_mapping(raw))
    return list(folded.requests.values())


def test_the_head_of_a_record_reads_as_the_whole_record_does() -> None:
    states = folded_states()
    assert any(s.revisits for s in states) and any(s.status == "open" for s in states)
    for state in states:
        record = request_record(state, state.model_dump_json().encode(), POLICY, TAG)
        whole = orjson.loads(record)
        head = record_head(record)
        assert "history" in whole and "history" not in head
        assert len(record[: record.rfind(b',"history":[')]) < len(record)
        assert newest_of(head) == newest_of(whole) == newest_event_at(state)
        assert newest_of(head) == newest_of(orjson.loads(state.model_dump_json()))
        assert entry_of(head, POLICY, 10, "calendar", TAG) == entry_of(
            whole, POLICY, 10, "calendar", TAG
        )
        assert part_from(head, TAG) == part_of(state, POLICY)
        assert request_facts(head) == request_facts(whole)
        assert RequestState.model_validate_json(record) == state  # the state ignores it


def test_a_record_without_its_newest_instant_is_read_whole() -> None:
    """A state's bare JSON (an older projector's record) is parsed whole, history and all;
    so is a record whose instant is not a string."""
    state = folded_states()[0]
    bare = state.model_dump_json().encode()
    assert record_head(bare) == orjson.loads(bare)
    odd = b'{"' + NEWEST_KEY.encode() + b'":5,' + bare[1:]
    assert "history" in record_head(odd)
    # the last `,"history":[` nested inside another key: cut there, not JSON; read whole
    nested = (
        b'{"'
        + NEWEST_KEY.encode()
        + b'":"2026-01-01T00:00:00+00:00","x":{"y":1,"history":[1]},"z":2}'
    )
    assert record_head(nested) == orjson.loads(nested)


def test_text_that_looks_like_the_history_key_is_not_taken_for_it() -> None:
    """Inside a string every quote is escaped: a title spelling the history's key does not
    cut the record there (the intake, title and all, is inside the history too)."""
    title = 'a "history":[ of ,"history":['
    states = folded_states(title=title)
    for state in states[:20]:
        record = request_record(state, state.model_dump_json().encode(), POLICY, TAG)
        head = record_head(record)
        assert head["intake"]["title"] == title and "history" not in head
        assert entry_of(head, POLICY, 10, "calendar", TAG).title == title


def test_a_head_written_by_orjson_is_pydantics_byte_for_byte() -> None:
    """What the projector writes of a state before its history (`head_json`) is the JSON
    pydantic writes of it, over generated states and text, numbers and instants of every
    kind a state holds."""
    odd = {
        "title": 'é "quoted" \n tab\t \u0001 \u2028 \\ end',
        "description": "x" * 300,
        "value_estimate": 1e-05,
        "icp_overlap_pct": 33.333333333333336,
        "first_contact_at": "2026-03-01T09:15:00.000001+05:30",
        "asks": ["mdf", "pilot"],
    }
    states = folded_states() + folded_states(**odd) + folded_states(value_estimate=1e20)
    assert any(s.decisions and s.decisions[-1].review_on for s in states)
    for state in states:
        assert head_json(state) == state.model_dump_json(exclude={"history"}).encode()


@given(
    at=st.datetimes(
        datetime(1970, 1, 2),
        datetime(9998, 12, 30),
        timezones=st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
            lambda minutes: timezone(timedelta(minutes=minutes))
        ),
    )
)
def test_a_records_newest_instant_is_written_as_isoformat_writes_it(at: datetime) -> None:
    """`with_newest` writes the instant with orjson: the same text as `isoformat` for any
    whole-minute offset (the only ones an event can carry) and any fraction of a second."""
    state = one_state()
    stamped = state.model_copy(
        update={"history": (state.history[0].model_copy(update={"occurred_at": at}),)}
    )
    record = with_newest(b'{"request_id":"r"}', stamped)
    assert orjson.loads(record)[NEWEST_KEY] == at.isoformat()


@functools.cache
def one_state() -> RequestState:
    return folded_states()[0]


def lean_record(state: RequestState) -> bytes:
    """The projector's record of a state: its lean JSON (history as recorded), its extras."""
    events = [orjson.dumps(e.model_dump(mode="json", exclude_defaults=True)) for e in state.history]
    return request_record(state, request_json(state, None, events), POLICY, TAG)


def test_a_lean_record_reads_back_to_its_state_and_as_the_whole_record_does() -> None:
    """A lean record holds of a state only what the indexes and the alert timer read
    beside its history: they read the same off it as off the whole state's record, and
    its history folds back to the same state (`request_from_json`)."""
    states = folded_states() + folded_states(title='a "lean":1, "history":[ title')
    assert any(s.status == "decided" and s.decisions[-1].revisit_on for s in states)
    assert any(s.status == "open" and s.score is not None for s in states)
    assert any(s.revisits for s in states)
    lean_bytes = whole_bytes = 0
    for state in states:
        lean = lean_record(state)
        whole = request_record(state, state.model_dump_json().encode(), POLICY, TAG)
        assert orjson.loads(lean)[LEAN_KEY] == 1 and LEAN_KEY not in orjson.loads(whole)
        assert request_from_json(lean) == state
        assert request_from_json(lean).model_dump_json() == state.model_dump_json()
        assert request_from_json(whole) == state  # a record before lean ones reads as before
        head, whole_head = record_head(lean), record_head(whole)
        assert "history" not in head
        assert entry_of(head, POLICY, 10, "calendar", TAG) == entry_of(
            whole_head, POLICY, 10, "calendar", TAG
        )
        assert entry_of(head, POLICY, 10, "calendar") == entry_of(
            orjson.loads(state.model_dump_json()), POLICY, 10, "calendar"
        )
        assert request_facts(head) == request_facts(whole_head)
        assert part_from(head, TAG) == part_of(state, POLICY)
        lean_bytes, whole_bytes = lean_bytes + len(lean), whole_bytes + len(whole)
    assert lean_bytes < 0.8 * whole_bytes  # what every worker and API keeps per request


def test_a_lean_record_of_events_that_arrived_out_of_order_reads_back() -> None:
    """A request whose events came in another order than they are folded in: its history
    is kept in fold order, and folds back to the same state."""
    for state in folded_states()[:60]:
        if len(state.history) < 3:
            continue
        arrived = [state.history[0], *reversed(state.history[1:])]
        refolded: RequestState | None = None
        for event in arrived:
            refolded = apply_request(refolded, event)
        assert refolded == state
        assert request_from_json(lean_record(refolded)) == state


def test_a_record_that_is_neither_is_refused() -> None:
    state = one_state()
    lean = lean_record(state)
    no_intake = lean[: lean.rfind(b',"history":[')] + b',"history":[]}'
    for odd in (no_intake, b'{"lean":1,"history":[{"type":"intake"}]}', b"[]", b"{"):
        try:
            request_from_json(odd)
        except ValueError:
            continue
        raise AssertionError(f"{odd!r} read as a state")


def test_the_benchmarks_digest_checks_a_lean_records_head_against_its_history() -> None:
    """`bench.digest` reads a lean record's state off its history: a head that says
    otherwise (what the indexes would read) must not digest as the fold's state."""
    from bench.digest import canonical

    state = next(s for s in folded_states() if s.status == "open")
    lean = lean_record(state)
    assert canonical(lean) == canonical(state.model_dump_json().encode())
    wrong = lean.replace(b'"status":"open"', b'"status":"decided"', 1)
    assert request_from_json(wrong) == state
    assert canonical(wrong) != canonical(state.model_dump_json().encode())
