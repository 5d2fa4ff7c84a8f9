"""The pipeline's and the overdue list's indexes (issue 11) answer what the views answer."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import islice

import pytest

from events import from_mapping
from ledger.entrypoints.history import generate
from ledger.rules.policy import Policy
from projections import Folded
from projections.listindex import ListIndex
from projections.views import overdue, pipeline

POLICY = Policy()
UNTIL = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


@pytest.mark.parametrize("regional", [False, True], ids=["utc", "crm-offsets"])
@pytest.mark.parametrize("unit", ["calendar", "business"])
def test_the_index_kept_as_states_change_answers_like_the_views(unit: str, regional: bool) -> None:
    """Every state change is put into the index as the log folds (so entries are
    replaced and moved between lists), then the lists are read at several instants;
    with instants in UTC, and in each CRM's own offset."""
    index = ListIndex(POLICY, 10, unit)  # type: ignore[arg-type]
    folded = Folded()
    for raw in generate(requests=250, until=UNTIL, seed=13, regional=regional):
        event = from_mapping(raw)
        folded.apply(event)
        if event.type != "escalation":
            state = folded.requests[event.data.request_id]
            index.put(state.request_id, state.model_dump_json().encode())
    states = list(folded.requests.values())
    # changed in place, entry by entry, the lists hold what lists built at once from the
    # final entries hold: nothing left behind by a change, nothing missing
    whole = ListIndex(POLICY, 10, unit)  # type: ignore[arg-type]
    whole.put_entries({s.request_id: whole.entry(s.model_dump_json().encode()) for s in states})
    for name in ("open", "decision_due", "hold_due", "revisit_on", "review_on"):
        assert list(getattr(index, name)) == list(getattr(whole, name)), name
    assert index.newest_at is not None and index.covers(UNTIL)
    assert not index.covers(index.newest_at - timedelta(seconds=1))
    for as_of in (UNTIL, UNTIL + timedelta(hours=13), UNTIL + timedelta(days=40)):
        want = overdue(states, as_of, POLICY, days=10, unit=unit)  # type: ignore[arg-type]
        assert index.overdue(as_of) == want
        assert index.overdue_count(as_of) == len(want)
        first = list(islice(index.iter_overdue(as_of), 7))  # lazily: a page of the order
        assert [index.overdue_row(o) for o in first] == want[:7]
        assert len({r["reason"] for r in want}) == 4
    for filters in ({}, {"owner": "a.lindqvist"}, {"stage": "scored"}, {"kind": "vendor_support"}):
        want_ids = [r["request_id"] for r in pipeline(states, UNTIL, POLICY, **filters)]
        assert index.open_requests(**filters) == want_ids and want_ids


def test_a_request_leaves_the_lists_when_it_goes() -> None:
    index = ListIndex(POLICY, 10, "calendar")
    folded = Folded()
    for raw in generate(requests=20, until=UNTIL, seed=2):
        folded.apply(from_mapping(raw))
    for state in folded.requests.values():
        index.put(state.request_id, state.model_dump_json().encode())
    for request_id in list(folded.requests):
        index.put(request_id, None)
    assert index.open_requests() == [] and index.overdue(UNTIL) == []
    assert not (index.decision_due or index.hold_due or index.revisit_on or index.review_on)


def test_pipeline_rows_read_off_the_entries_are_the_views_rows() -> None:
    """A record as the projector writes it carries the request's latest assessment, so
    its entry makes its pipeline row (no state parsed); under another policy, or from a
    record without it, the entry has none and the row comes from the state."""
    from projections.records import policy_tag, request_record
    from projections.views import calendar_of

    folded = Folded()
    for raw in generate(requests=250, until=UNTIL, seed=21):
        folded.apply(from_mapping(raw))
    states = list(folded.requests.values())
    index = ListIndex(POLICY, 10, "calendar")
    tag = policy_tag(POLICY)
    for s in states:
        index.put(s.request_id, request_record(s, s.model_dump_json().encode(), POLICY, tag))
    cal = calendar_of(POLICY)
    for as_of in (UNTIL, UNTIL + timedelta(days=3, hours=5), UNTIL + timedelta(days=90)):
        rows = [index.entries[r].pipeline_row(as_of, cal) for _, r in index.open]
        want = pipeline(states, as_of, POLICY)
        assert rows == want and len(want) > 20
        assert any(r["recommendation"] for r in want) and any(
            r["recommendation"] is None for r in want
        )
    decided = next(s for s in states if s.status == "decided")
    assert index.entries[decided.request_id].pipeline_row(UNTIL, cal) is None

    other = Policy.model_validate({"fair": {"decline_below": 4.9}})
    elsewhere = ListIndex(other, 10, "calendar")
    plain = ListIndex(POLICY, 10, "calendar")
    for s in states:
        elsewhere.put(s.request_id, request_record(s, s.model_dump_json().encode(), POLICY, tag))
        plain.put(s.request_id, s.model_dump_json().encode())
    for i in (elsewhere, plain):
        assert all(e.assessed is None for e in i.entries.values())
        assert all(e.pipeline_row(UNTIL, cal) is None for e in i.entries.values())


def test_the_pipeline_is_oldest_first_whatever_offsets_the_crms_wrote() -> None:
    """The pipeline sorted its rows by `opened_at`'s text: with CRMs in several offsets
    that is not oldest first (09:00+01:00 is before 08:30+00:00). The views and the
    index sort by the instant, and keep each row's own offset in what they show."""
    folded = Folded()
    for raw in generate(requests=250, until=UNTIL, seed=13, regional=True):
        folded.apply(from_mapping(raw))
    states = list(folded.requests.values())
    rows = pipeline(states, UNTIL, POLICY)
    opened = [datetime.fromisoformat(r["opened_at"]) for r in rows]
    assert len({at.utcoffset() for at in opened}) == 3  # the three CRMs' offsets, as written
    assert opened == sorted(opened) and [r["opened_at"] for r in rows] != sorted(
        r["opened_at"] for r in rows
    )  # the text's order is another
    index = ListIndex(POLICY, 10, "calendar")
    for s in states:
        index.put(s.request_id, s.model_dump_json().encode())
    assert index.open_requests() == [r["request_id"] for r in rows]
