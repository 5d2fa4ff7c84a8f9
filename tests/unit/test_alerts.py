"""Alert rules at their boundaries, and crossings: each raised once, again only after a
recovery."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from events import from_mapping
from events.schema import AnyEvent
from ledger.rules.policy import Policy
from projections import fold
from projections.alerts import alerts_of_log, customer_alerts, request_alerts
from tests.factories import decision, escalation, intake, revisit

POLICY = Policy()


def at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def evs(*payloads: dict[str, Any]) -> list[AnyEvent]:
    return [from_mapping(p) for p in payloads]


def kinds(events: list[AnyEvent], now: str, unit: str = "calendar") -> list[str]:
    state = fold(events).requests["R"]
    return sorted(a["kind"] for a in request_alerts(state, at(now), POLICY, 10, unit))  # type: ignore[arg-type]


OPENED = intake("R", at="2026-03-02T09:00:00Z")  # a Monday


def test_decision_overdue_at_exactly_ten_days_and_one_second() -> None:
    assert kinds(evs(OPENED), "2026-03-12T09:00:00Z") == []
    assert kinds(evs(OPENED), "2026-03-12T09:00:01Z") == ["decision_overdue"]


def test_first_contact_starts_the_clock() -> None:
    early = intake("R", at="2026-03-05T09:00:00Z", first_contact_at="2026-03-01T09:00:00Z")
    assert kinds(evs(early), "2026-03-11T09:00:01Z") == ["decision_overdue"]


def test_business_days_over_weekends() -> None:
    friday = intake("R", at="2026-03-06T17:00:00Z")
    # ten business days after Friday 03-06 17:00 is Friday 03-20 17:00 (two weekends)
    assert kinds(evs(friday), "2026-03-20T17:00:00Z", "business") == []
    assert kinds(evs(friday), "2026-03-20T17:00:01Z", "business") == ["decision_overdue"]
    # calendar days would have crossed on 03-16
    assert kinds(evs(friday), "2026-03-16T17:00:01Z") == ["decision_overdue"]


def test_revisit_date_today_is_not_overdue_yesterday_is() -> None:
    decided = decision("R", "conditional_no", at="2026-03-03T09:00:00Z", revisit_on="2026-03-20")
    assert kinds(evs(OPENED, decided), "2026-03-20T23:59:59Z") == []
    assert kinds(evs(OPENED, decided), "2026-03-21T00:00:00Z") == ["revisit_overdue"]


def test_hold_overdue_and_a_hold_revisited_just_in_time() -> None:
    hold = decision("R", "hold", at="2026-03-03T09:00:00Z", revisit_on="2026-04-30")
    assert kinds(evs(OPENED, hold), "2026-03-13T09:00:00Z") == []
    assert kinds(evs(OPENED, hold), "2026-03-13T09:00:01Z") == ["hold_overdue"]
    just_in_time = revisit("R", at="2026-03-13T08:59:59Z")
    assert (
        alerts_of_log(
            evs(OPENED, hold, just_in_time), at("2026-03-14T00:00:00Z"), POLICY, 10, "calendar"
        )
        == {}
    )


def test_pilot_review_overdue_until_a_later_decision() -> None:
    yes = decision(
        "R",
        "provisional_yes",
        at="2026-03-03T09:00:00Z",
        pilot={"scope": "s", "success_metric": "m", "review_on": "2026-04-01"},
    )
    assert kinds(evs(OPENED, yes), "2026-04-01T12:00:00Z") == []
    assert kinds(evs(OPENED, yes), "2026-04-02T00:00:00Z") == ["pilot_review_overdue"]
    scaled = decision("R", "scaled", at="2026-04-03T09:00:00Z")
    assert kinds(evs(OPENED, yes, scaled), "2026-05-01T00:00:00Z") == []


def test_crossing_twice_gives_exactly_two_decision_overdue_alerts() -> None:
    log = evs(
        OPENED,
        decision("R", "conditional_no", at="2026-03-14T09:00:00Z", revisit_on="2026-04-10"),
        revisit("R", at="2026-04-01T09:00:00Z"),
    )
    raised = alerts_of_log(log, at("2026-04-20T09:00:00Z"), POLICY, 10, "calendar")
    overdue = [a for a in raised.values() if a["kind"] == "decision_overdue"]
    assert len(overdue) == 2
    assert {a["details"]["episode"] for a in overdue} == {
        "2026-03-02T09:00:00+00:00",
        "2026-04-01T09:00:00+00:00",
    }
    # the first was seen when the decision arrived, as of the decision's own time
    assert min(a["raised_at"] for a in overdue) == "2026-03-14T09:00:00+00:00"
    # evaluating again, later, raises nothing new: the ids are the same
    again = alerts_of_log(log, at("2026-04-25T09:00:00Z"), POLICY, 10, "calendar")
    assert set(again) == set(raised)


def test_an_overdue_request_decided_in_time_raises_nothing() -> None:
    log = evs(OPENED, decision("R", "decline", at="2026-03-12T09:00:00Z"))
    assert alerts_of_log(log, at("2026-06-01T00:00:00Z"), POLICY, 10, "calendar") == {}


def test_customer_abuse_flagged_once_when_the_pattern_crosses() -> None:
    log = evs(
        escalation("acme", "p1", "partner_fired", at="2026-03-02T09:00:00Z"),
        escalation("acme", "p2", "complaint", at="2026-03-03T09:00:00Z"),
        escalation("acme", "p2", "partner_fired", at="2026-03-04T09:00:00Z"),
        escalation("acme", "p3", "partner_fired", at="2026-03-05T09:00:00Z"),
    )
    raised = alerts_of_log(log, at("2026-04-01T00:00:00Z"), POLICY, 10, "calendar")
    assert [(a["kind"], a["subject_id"], a["raised_at"]) for a in raised.values()] == [
        ("customer_abuse_flagged", "acme", "2026-03-04T09:00:00+00:00")
    ]
    assert raised[next(iter(raised))]["details"]["reasons"] == ["2 partners fired (>= 2)"]
    customer = fold(log[:2]).customers["acme"]
    assert customer_alerts(customer, at("2026-04-01T00:00:00Z"), POLICY) == []


@pytest.mark.parametrize(("unit", "clock"), [("calendar", "+00:00"), ("business", "+05:30")])
def test_checking_only_when_next_check_says_finds_what_checking_every_tick_finds(
    unit: str, clock: str
) -> None:
    """The alert timer's deadline index: a state checked only at `next_check` raises the
    same alerts as one checked at every tick, ticks every 7 hours and at every deadline's
    edge (where a check one microsecond early would find nothing)."""
    from datetime import timedelta

    from ledger.entrypoints.history import generate
    from projections.alerts import next_check

    until = datetime.fromisoformat("2026-06-30T09:00:00+00:00")
    folded = fold(from_mapping(e) for e in generate(requests=120, until=until, seed=9))
    tz = datetime.fromisoformat(f"2026-01-01T00:00:00{clock}").tzinfo
    start = datetime(2025, 12, 1, tzinfo=tz)
    ticks = [start + timedelta(hours=7 * i) for i in range(1, 900)]
    edges = set()
    for state in folded.requests.values():
        t = start
        while (t := next_check(state, t, POLICY, 10, unit)) is not None:  # type: ignore[arg-type]
            edges.update((t, t - timedelta(microseconds=1)))
    ticks = sorted({*ticks, *(e.astimezone(tz) for e in edges if e > start)})
    compared = 0
    for subject in [*folded.requests.values(), *folded.customers.values()]:

        def check(at: datetime, s: Any = subject) -> set[str]:
            if hasattr(s, "request_id"):
                return {a["alert_id"] for a in request_alerts(s, at, POLICY, 10, unit)}  # type: ignore[arg-type]
            return {a["alert_id"] for a in customer_alerts(s, at, POLICY)}

        every_tick: set[str] = set()
        indexed: set[str] = set()
        due: datetime | None = start
        for tick in ticks:
            every_tick |= check(tick)
            if due is not None and due <= tick:
                indexed |= check(tick)
                due = next_check(subject, tick, POLICY, 10, unit)  # type: ignore[arg-type]
        assert indexed == every_tick, subject
        compared += len(every_tick)
    assert compared > 100  # the history crosses plenty of deadlines


@pytest.mark.parametrize("unit", ["calendar", "business"])
def test_a_requests_facts_call_for_the_alerts_its_state_does(unit: Any) -> None:
    """The alert timer reads a due request's facts off its stored JSON instead of parsing
    the state: as of any instant from its newest event on, the same alerts and the same
    next check; before it, the facts refuse (only the whole state can say)."""
    from datetime import timedelta

    import orjson

    from ledger.entrypoints.history import generate
    from projections.alerts import next_check
    from projections.state import request_facts

    until = datetime.fromisoformat("2026-06-30T09:00:00+00:00")
    folded = fold(from_mapping(e) for e in generate(requests=300, until=until, seed=9))
    raised = checked = 0
    for state in folded.requests.values():
        facts = request_facts(orjson.loads(state.model_dump_json()))
        assert facts.newest_at == max(e.occurred_at for e in state.history)
        for as_of in (
            facts.newest_at,
            until,
            until + timedelta(days=3),
            until + timedelta(days=60),
        ):
            if as_of < facts.newest_at:
                continue
            want = request_alerts(state, as_of, POLICY, 10, unit)
            assert request_alerts(facts, as_of, POLICY, 10, unit) == want
            assert next_check(facts, as_of, POLICY, 10, unit) == next_check(
                state, as_of, POLICY, 10, unit
            )
            raised += len(want)
            checked += 1
        with pytest.raises(ValueError, match="newest event"):
            request_alerts(facts, facts.newest_at - timedelta(seconds=1), POLICY, 10, unit)
    assert checked > 900 and raised > 100
    kinds = {a["kind"] for s in folded.requests.values()
             for a in request_alerts(s, until + timedelta(days=60), POLICY, 10, unit)}  # fmt: skip
    assert kinds == {"decision_overdue", "revisit_overdue", "pilot_review_overdue", "hold_overdue"}
