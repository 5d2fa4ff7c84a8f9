"""The read models, from known histories; and idempotence under redelivery and shuffling."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from events import from_mapping
from events.schema import AnyEvent
from ledger.rules.policy import Policy
from projections import fold
from projections.views import abuse, customer_view, metrics, overdue, pipeline, request_view
from tests.factories import decision, escalation, intake, revisit, score

POLICY = Policy()


def ev(payload: dict[str, Any]) -> AnyEvent:
    return from_mapping(payload)


def at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def history() -> list[AnyEvent]:
    return [
        ev(p)
        for p in [
            intake("A", at="2026-03-02T09:00:00Z", owner="ana"),
            score("A", 4, 3, 5, 2, at="2026-03-03T09:00:00Z"),  # conditional_no
            intake("B", at="2026-03-02T09:00:00Z", owner="ben", kind="vendor_support"),
            intake("C", at="2026-03-04T09:00:00Z", owner="ana"),
            score("C", 5, 5, 5, 5, at="2026-03-04T10:00:00Z"),
            decision("C", "provisional_yes", at="2026-03-05T09:00:00Z"),
            decision("C", "scaled", at="2026-04-20T09:00:00Z"),
            intake("D", at="2026-03-02T09:00:00Z", owner="ben"),
            score("D", 4, 4, 4, 4, at="2026-03-03T09:00:00Z"),
            decision("D", "hold", at="2026-03-06T09:00:00Z", revisit_on="2026-03-20"),
            intake("E", at="2026-03-02T09:00:00Z", owner="ana"),
            score("E", 5, 5, 5, 5, at="2026-03-03T09:00:00Z"),
            decision("E", "decline", at="2026-03-20T09:00:00Z"),  # an override
            revisit("E", "partner_returned", at="2026-03-25T09:00:00Z"),
            escalation("globex", "p1", "partner_fired", 4, at="2026-03-10T09:00:00Z"),
            escalation("globex", "p2", "partner_fired", 5, at="2026-03-20T09:00:00Z"),
            escalation("initech", "p1", "complaint", 2, at="2026-03-11T09:00:00Z"),
        ]
    ]


AS_OF = at("2026-03-31T12:00:00Z")


def test_pipeline_lists_open_requests_with_age_and_recommendation() -> None:
    folded = fold(history())
    rows = pipeline(folded.requests.values(), AS_OF, POLICY)
    assert [r["request_id"] for r in rows] == ["A", "B", "E"]
    a = rows[0]
    assert (a["stage"], a["latest_adjusted_score"], a["recommendation"]) == (
        "scored",
        3.5,
        "conditional_no",
    )
    assert a["age_days"] == 29 and a["business_age_days"] == 21
    e = rows[2]
    assert e["opened_at"] == "2026-03-25T09:00:00+00:00"  # the revisit restarted the clock
    assert e["age_days"] == 6
    assert [
        r["request_id"] for r in pipeline(folded.requests.values(), AS_OF, POLICY, owner="ben")
    ] == ["B"]
    assert [
        r["request_id"] for r in pipeline(folded.requests.values(), AS_OF, POLICY, stage="intake")
    ] == ["B"]
    assert (
        pipeline(folded.requests.values(), AS_OF, POLICY, kind="vendor_support")[0]["request_id"]
        == "B"
    )


def test_overdue_reasons() -> None:
    folded = fold(history())
    rows = overdue(folded.requests.values(), AS_OF, POLICY)
    got = {(r["request_id"], r["reason"]): r["days_overdue"] for r in rows}
    assert got == {
        ("A", "decision_overdue"): 19.12,  # since 03-02 09:00 + 10 days
        ("B", "decision_overdue"): 19.12,
        ("D", "hold_overdue"): 15.12,
        ("D", "revisit_overdue"): 11.0,  # revisit_on 03-20
    }
    # C's pilot review (03-05 + 45 days = 04-19) is not due; E reopened 6 days ago
    assert overdue(folded.requests.values(), AS_OF, POLICY, days=30) == [
        r for r in rows if r["reason"] == "revisit_overdue"
    ]
    late = overdue(folded.requests.values(), at("2026-04-21T00:00:00Z"), POLICY)
    assert ("C", "pilot_review_overdue") not in {(r["request_id"], r["reason"]) for r in late}


def test_pilot_review_overdue_without_a_later_decision() -> None:
    events = [ev(intake("P")), ev(decision("P", "provisional_yes", at="2026-03-05T09:00:00Z"))]
    states = fold(events).requests.values()
    assert overdue(states, at("2026-04-19T23:59:00Z"), POLICY) == []
    rows = overdue(states, at("2026-04-20T08:00:00Z"), POLICY)
    assert [(r["reason"], r["days_overdue"]) for r in rows] == [("pilot_review_overdue", 1.0)]


def test_overdue_boundaries_exactly_ten_days() -> None:
    states = fold([ev(intake("X", at="2026-03-02T09:00:00Z"))]).requests.values()
    assert overdue(states, at("2026-03-12T09:00:00Z"), POLICY) == []
    assert overdue(states, at("2026-03-12T09:00:01Z"), POLICY)[0]["reason"] == "decision_overdue"
    # business days: ten business days after Monday 03-02 is Monday 03-16
    assert overdue(states, at("2026-03-16T09:00:00Z"), POLICY, unit="business") == []
    assert len(overdue(states, at("2026-03-16T09:00:01Z"), POLICY, unit="business")) == 1


def test_abuse_flags_customers_with_reasons() -> None:
    folded = fold(history())
    rows = abuse(folded.customers.values(), AS_OF, POLICY)
    assert [r["customer_id"] for r in rows] == ["globex", "initech"]
    globex = rows[0]
    assert globex["flagged"] and globex["reasons"] == ["2 partners fired (>= 2)"]
    assert (globex["partners_fired"], globex["distinct_partners"], globex["severity_score"]) == (
        2,
        2,
        9,
    )
    assert globex["by_kind"] == {"partner_fired": 2}
    assert globex["last_escalation_at"] == "2026-03-20T09:00:00+00:00"
    calm = abuse(folded.customers.values(), AS_OF, POLICY, flagged=False)
    assert [r["customer_id"] for r in calm] == ["initech"]
    view = customer_view(folded.customers["globex"], AS_OF, POLICY)
    assert view is not None and len(view["history"]) == 2
    assert customer_view(folded.customers["globex"], at("2026-03-01T00:00:00Z"), POLICY) is None


def test_metrics() -> None:
    folded = fold(history())
    early = metrics(folded.requests.values(), AS_OF, POLICY)
    assert early["by_outcome"] == {"decline": 1, "hold": 1, "provisional_yes": 1}
    assert early["pilot_success_rate"] is None  # C's 90-day window is still open
    m = metrics(folded.requests.values(), at("2026-06-30T00:00:00Z"), POLICY)
    assert m["by_outcome"] == {"decline": 1, "hold": 1, "provisional_yes": 1, "scaled": 1}
    assert m["decisions"] == 4
    # cycles: C 03-04 -> 03-05 (1), D 03-02 -> 03-06 (4), E 03-02 -> 03-20 (14)
    assert m["median_business_days_to_decision"] == 4.0
    assert m["p90_business_days_to_decision"] == 14 - (14 - 4) * 0.2
    assert m["share_decided_within_target"] == round(2 / 3, 4)
    assert m["revisit_rate"] == round(1 / 3, 4)
    assert m["pilot_success_rate"] == 1.0  # C scaled 46 days after its pilot began
    assert m["override_rate"] == round(2 / 3, 4)  # D (recommended yes, held), E (declined)


def test_request_view_has_the_timeline() -> None:
    view = request_view(fold(history()).requests["E"], AS_OF, POLICY)
    assert view is not None
    assert [t["type"] for t in view["timeline"]] == ["intake", "score", "decision", "revisit"]
    assert (view["status"], view["revisits"], view["last_outcome"]) == ("open", 1, "decline")


# --- idempotence: redelivered and interleaved logs fold to the same read models -------


def lifecycle(request: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    """A valid history for one request (what the validator lets through)."""
    steps = st.lists(st.sampled_from(["score", "decide", "revisit"]), max_size=8)

    def build(kinds: list[str]) -> list[dict[str, Any]]:
        out = [intake(request, at="2026-03-02T09:00:00Z")]
        decided, yes = False, False
        for i, kind in enumerate(kinds):
            stamp = f"2026-03-{3 + i:02d}T09:00:00Z"
            if kind == "score":
                out.append(score(request, 3, 4, 5, i % 6, name=f"{request}-s{i}", at=stamp))
            elif kind == "decide":
                outcome = ["provisional_yes", "conditional_no", "decline", "hold"][i % 4]
                if yes and i % 3 == 0:
                    outcome = "scaled"
                yes = yes or outcome == "provisional_yes"
                out.append(decision(request, outcome, name=f"{request}-d{i}", at=stamp))
                decided = True
            elif decided:
                out.append(revisit(request, name=f"{request}-r{i}", at=stamp))
                decided = False
        return out

    return steps.map(build)


def escalations(customer: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    kinds = st.sampled_from(["partner_fired", "abusive_conduct", "complaint"])
    return st.lists(st.tuples(kinds, st.integers(1, 4)), max_size=6).map(
        lambda items: [
            escalation(
                customer,
                f"p{n}",
                kind,
                3,
                name=f"{customer}-{i}",
                at=f"2026-03-{10 + i:02d}T09:00:00Z",
            )
            for i, (kind, n) in enumerate(items)
        ]
    )


logs = st.tuples(
    st.lists(st.sampled_from("QRSTU"), unique=True, max_size=5).flatmap(
        lambda ids: st.tuples(*[lifecycle(i) for i in ids])
    ),
    st.lists(st.sampled_from(["k1", "k2", "k3"]), unique=True, max_size=3).flatmap(
        lambda ids: st.tuples(*[escalations(i) for i in ids])
    ),
)


@settings(max_examples=60, deadline=None)
@given(logs, st.randoms(use_true_random=False))
def test_shuffled_duplicated_log_folds_like_the_clean_log(logs_: Any, rnd: Any) -> None:
    per_key = [list(seq) for seq in (*logs_[0], *logs_[1]) if seq]
    clean = [ev(p) for seq in per_key for p in seq]
    # interleave keys at random, keep each key's order, and redeliver some events later
    queues = [list(seq) for seq in per_key]
    dirty: list[AnyEvent] = []
    delivered: list[dict[str, Any]] = []
    while any(queues):
        queue = rnd.choice([q for q in queues if q])
        payload = queue.pop(0)
        dirty.append(ev(payload))
        delivered.append(payload)
        if rnd.random() < 0.3:  # a redelivery of something already delivered
            dirty.append(ev(rnd.choice(delivered)))
    a, b = fold(clean), fold(dirty)
    assert a.requests == b.requests and a.customers == b.customers
    assert pipeline(a.requests.values(), AS_OF, POLICY) == pipeline(
        reversed(list(b.requests.values())), AS_OF, POLICY
    )
    assert overdue(a.requests.values(), AS_OF, POLICY) == overdue(
        b.requests.values(), AS_OF, POLICY
    )
    assert metrics(a.requests.values(), AS_OF, POLICY) == metrics(
        b.requests.values(), AS_OF, POLICY
    )
    assert abuse(a.customers.values(), AS_OF, POLICY) == abuse(
        reversed(list(b.customers.values())), AS_OF, POLICY
    )


def test_states_roundtrip_through_json() -> None:
    import orjson

    from projections.state import CustomerState, RequestState

    folded = fold(history())
    for state in folded.requests.values():
        raw = orjson.loads(orjson.dumps(state.model_dump(mode="json")))
        assert RequestState.model_validate(raw) == state
        # built without validation (`_built`), a state writes the changelog a validated
        # one would: the same keys in the same order, the same values (a set's order aside)
        ours = orjson.loads(state.model_dump_json())
        validated = orjson.loads(
            RequestState.model_validate_json(state.model_dump_json()).model_dump_json()
        )
        assert list(ours) == list(validated)
        assert ours == validated
    for customer in folded.customers.values():
        raw = orjson.loads(orjson.dumps(customer.model_dump(mode="json")))
        assert CustomerState.model_validate(raw) == customer


def test_as_of_in_the_past_sees_the_ledger_as_it_was() -> None:
    folded = fold(history())
    before = at("2026-03-22T00:00:00Z")  # E declined on 03-20, revisited on 03-25
    open_then = [r["request_id"] for r in pipeline(folded.requests.values(), before, POLICY)]
    assert open_then == ["A", "B"]
    e = request_view(folded.requests["E"], before, POLICY)
    assert e is not None and e["status"] == "decided" and len(e["timeline"]) == 3
    assert request_view(folded.requests["C"], at("2026-03-01T00:00:00Z"), POLICY) is None
    early = abuse(folded.customers.values(), at("2026-03-15T00:00:00Z"), POLICY)
    assert [(r["customer_id"], r["flagged"]) for r in early] == [
        ("globex", False),
        ("initech", False),
    ]


# --- arrival order: a subject's events fold the same in any admissible order ---------


def _admissible(rnd: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A random order of one subject's events that still starts with its intake (for a
    customer: any order), as a CRM publishing unkeyed could make them arrive."""
    first = [e for e in events if e["type"] == "intake"]
    rest = [e for e in events if e["type"] != "intake"]
    rnd.shuffle(rest)
    return first + rest


@settings(max_examples=80, deadline=None)
@given(logs, st.randoms(use_true_random=False))
def test_any_admissible_arrival_order_folds_to_the_same_state_and_views(
    logs_: Any, rnd: Any
) -> None:
    per_key = [list(seq) for seq in (*logs_[0], *logs_[1]) if seq]
    in_order = fold(ev(p) for seq in per_key for p in seq)
    shuffled = fold(ev(p) for seq in per_key for p in _admissible(rnd, seq))
    assert shuffled.requests == in_order.requests
    assert shuffled.customers == in_order.customers
    a, b = in_order.requests.values(), shuffled.requests.values()
    assert pipeline(a, AS_OF, POLICY) == pipeline(b, AS_OF, POLICY)
    assert overdue(a, AS_OF, POLICY) == overdue(b, AS_OF, POLICY)
    assert metrics(a, AS_OF, POLICY) == metrics(b, AS_OF, POLICY)
    for request_id, state in in_order.requests.items():
        later = shuffled.requests[request_id]
        assert request_view(state, AS_OF, POLICY) == request_view(later, AS_OF, POLICY)
    for customer_id, state in in_order.customers.items():
        later = shuffled.customers[customer_id]
        assert customer_view(state, AS_OF, POLICY) == customer_view(later, AS_OF, POLICY)
    ca, cb = in_order.customers.values(), shuffled.customers.values()
    assert abuse(ca, AS_OF, POLICY) == abuse(cb, AS_OF, POLICY)


def test_event_ids_order_as_their_text_does() -> None:
    """fold_order ties by the UUID itself: the same order as the ids' canonical text."""
    import uuid

    ids = [uuid.uuid4() for _ in range(2000)] + [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
    assert sorted(ids) == sorted(ids, key=str)


def test_a_request_state_stored_with_its_timeline_and_ids_still_loads() -> None:
    """Request states once carried `timeline` and `event_ids` beside their history; they
    are now read off it, and a changelog written before still loads, to the same state."""
    from projections.state import RequestState

    folded = fold(history())
    for state in folded.requests.values():
        stored = orjson.loads(state.model_dump_json())
        assert "timeline" not in stored and "event_ids" not in stored
        stored["timeline"] = [e.model_dump(mode="json") for e in state.timeline]
        stored["event_ids"] = sorted(state.event_ids)
        assert RequestState.model_validate_json(orjson.dumps(stored)) == state
        assert [e.event_id for e in state.timeline] == [str(e.event_id) for e in state.history]
        assert state.event_ids == {str(e.event_id) for e in state.history}
    a = folded.requests["A"]
    assert [e.summary for e in a.timeline][:2] == ["intake: Proposal A", "score: F4 A3 I5 R2"]


def test_a_request_written_with_its_recorded_events_spliced_parses_to_its_state() -> None:
    """The projector writes a request's history as the events were recorded, after what
    its stored JSON held (`request_json`), after a lean head (`lean_head_json`); whatever
    was appended, the JSON reads back to the state (`request_from_json`), and where the
    pieces do not add up it is the state's whole JSON."""
    from events import encode
    from projections.state import (
        LEAN_KEY,
        RequestState,
        apply_request,
        request_from_json,
        request_json,
    )

    events = sorted(history(), key=lambda e: (e.occurred_at, str(e.event_id)))
    states: dict[str, tuple[RequestState, bytes]] = {}
    spliced = 0
    for event in events:
        if event.type == "escalation":
            continue
        key = event.data.request_id
        before, stored = states.get(key, (None, None))
        after = apply_request(before, event)
        assert after is not None
        written = request_json(after, stored, [encode(event)])
        assert orjson.loads(written)[LEAN_KEY] == 1
        assert request_from_json(written) == after
        assert request_from_json(written).model_dump_json() == after.model_dump_json()
        spliced += written != after.model_dump_json().encode()
        states[key] = (after, written)
    assert spliced > 0  # the recorded form leaves defaults out: not the whole JSON again

    # two events at once onto the stored state
    a_events = [e for e in events if e.type != "escalation" and e.data.request_id == "C"]
    assert len(a_events) >= 3
    first = apply_request(None, a_events[0])
    assert first is not None
    stored = first.model_dump_json().encode()
    state = first
    for e in a_events[1:3]:
        state = apply_request(state, e)  # type: ignore[assignment]
    written = request_json(state, stored, [encode(e) for e in a_events[1:3]])
    assert request_from_json(written) == state
    assert request_from_json(stored) == first  # a whole state's JSON reads as before

    # pieces that do not add up, or a stored JSON of another shape: the whole state
    whole = state.model_dump_json().encode()
    assert request_json(state, stored, [encode(a_events[1])]) == whole  # one missing
    assert request_json(state, None, [encode(e) for e in a_events[1:3]]) == whole
    assert request_json(state, b'{"odd": 1}', [encode(e) for e in a_events[1:3]]) == whole
