"""Events that overtook their predecessor are held, released in order, or expire."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from ledger.rules.lifecycle import (
    MAX_HELD,
    Fact,
    Held,
    Refusal,
    SubjectState,
    Violation,
    admit,
    expire,
    hold,
    may_hold,
    release,
)


def fact(kind: str, n: int, outcome: str | None = None) -> Fact:
    return Fact(f"00000000-0000-0000-0000-{n:012d}", kind, "REQ-1", outcome)


def held(f: Fact, occurred: float, offset: int, since: float = 100.0) -> Held:
    return Held(f, occurred, "{}", "acct-9", 0, offset, since, Violation.UNKNOWN_REQUEST)


def judge(state: SubjectState, f: Fact, occurred: float, offset: int) -> tuple[SubjectState, list]:
    """What the validator does: admit and release, or hold, or refuse."""
    verdict = admit(state, f)
    if isinstance(verdict, SubjectState):
        state, admitted, refused = release(verdict)
        return state, [f.event_id, *(h.fact.event_id for h in admitted)] + refused
    if may_hold(state, verdict):
        return hold(state, held(f, occurred, offset)), []
    return state, [verdict]


LIFE = [
    (fact("intake", 1), 1.0),
    (fact("score", 2), 2.0),
    (fact("decision", 3, "provisional_yes"), 3.0),
    (fact("revisit", 4), 4.0),
    (fact("decision", 5, "provisional_yes"), 5.0),
    (fact("decision", 6, "scaled"), 6.0),
]


def test_a_decision_before_its_intake_is_held_then_admitted_after_it() -> None:
    state, out = judge(SubjectState(), fact("score", 2), 2.0, 7)
    assert out == [] and len(state.held) == 1
    state, out = judge(state, fact("intake", 1), 1.0, 8)
    assert out == [fact("intake", 1).event_id, fact("score", 2).event_id]
    assert state.held == () and state.status == "open"


@given(st.permutations(range(len(LIFE))))
def test_any_arrival_order_admits_the_whole_life_once(order: list[int]) -> None:
    state, admitted = SubjectState(), []
    for offset, i in enumerate(order):
        f, occurred = LIFE[i]
        state, out = judge(state, f, occurred, offset)
        admitted += out
    assert sorted(admitted) == sorted(f.event_id for f, _ in LIFE)
    assert state.held == ()


def test_a_held_event_that_became_a_duplicate_is_refused_for_good() -> None:
    state = hold(SubjectState(), held(fact("score", 2), 2.0, 1))
    state = admit(state, fact("intake", 1))
    assert isinstance(state, SubjectState)
    state = admit(state, fact("score", 2))  # the same score, re-sent and admitted directly
    assert isinstance(state, SubjectState)
    state, admitted, refused = release(state)
    assert admitted == [] and state.held == ()
    assert [r.code for _, r in refused] == [Violation.DUPLICATE_EVENT_ID]


def test_held_events_expire_after_the_grace_period_and_not_before() -> None:
    state = hold(SubjectState(), held(fact("score", 2), 2.0, 1, since=100.0))
    state = hold(state, held(fact("score", 3), 3.0, 2, since=250.0))
    same, expired = expire(state, now=399.0, grace_s=300.0)
    assert expired == [] and same == state
    later, expired = expire(state, now=400.0, grace_s=300.0)
    assert [h.offset for h in expired] == [1]
    assert [h.offset for h in later.held] == [2]


def test_only_premature_refusals_are_held_and_only_up_to_a_bound() -> None:
    state = SubjectState()
    assert not may_hold(state, Refusal(Violation.DUPLICATE_EVENT_ID, ""))
    assert may_hold(state, Refusal(Violation.UNKNOWN_REQUEST, ""))
    for n in range(MAX_HELD):
        state = hold(state, held(fact("score", n + 10), float(n), n))
    assert not may_hold(state, Refusal(Violation.UNKNOWN_REQUEST, ""))


def test_held_events_survive_the_state_json() -> None:
    state = SubjectState()
    for n, kind in zip(itertools.count(1), ["score", "revisit"], strict=False):
        state = hold(state, held(fact(kind, n), float(n), n))
    assert SubjectState.from_json(state.to_json()) == state
    assert state.without_held(0, 1).held == (state.held[1],)
