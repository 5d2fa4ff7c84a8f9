"""Business-day arithmetic: weekends, holidays, boundaries."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from ledger.rules.calendar import BusinessCalendar

CAL = BusinessCalendar()
UTC = UTC


def at(day: str, time: str = "09:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{time}:00+00:00")


def test_business_days_between_skips_weekends() -> None:
    friday, monday = date(2026, 3, 6), date(2026, 3, 9)
    assert CAL.business_days_between(friday, monday) == 1
    assert CAL.business_days_between(friday, friday) == 0
    assert CAL.business_days_between(monday, friday) == 0  # end before start
    assert CAL.business_days_between(date(2026, 3, 2), date(2026, 3, 16)) == 10


def test_holidays_are_not_business_days() -> None:
    cal = BusinessCalendar.of(["2026-03-09"])
    assert not cal.is_business_day(date(2026, 3, 9))
    assert cal.business_days_between(date(2026, 3, 6), date(2026, 3, 10)) == 1


def test_deadline_in_business_days_spans_weekends() -> None:
    start = at("2026-03-06", "15:30")  # a Friday
    assert CAL.deadline(start, 10, "business") == at("2026-03-20", "15:30")
    assert CAL.deadline(start, 1, "business") == at("2026-03-09", "15:30")
    saturday = at("2026-03-07")
    assert CAL.deadline(saturday, 1, "business") == at("2026-03-09")


def test_deadline_in_calendar_days_is_exact() -> None:
    start = at("2026-03-02")
    assert CAL.deadline(start, 10, "calendar") == start + timedelta(days=10)


def test_age() -> None:
    start = at("2026-03-06", "12:00")
    assert CAL.age(start, at("2026-03-07", "00:00"), "calendar") == 0.5
    assert CAL.age(start, at("2026-03-09"), "business") == 1.0


@given(
    start=st.dates(date(2025, 1, 1), date(2027, 12, 31)),
    span=st.integers(-10, 400),
    holidays=st.lists(st.dates(date(2025, 1, 1), date(2028, 12, 31)), max_size=12),
)
def test_business_days_between_counts_what_a_walk_day_by_day_counts(
    start: date, span: int, holidays: list[date]
) -> None:
    """Counted by whole weeks and the days left over, holidays taken away once each (on
    a weekday only): the same as walking every day between."""
    cal = BusinessCalendar.of(holidays)
    end = start + timedelta(days=span)
    walked = sum(cal.is_business_day(start + timedelta(days=i)) for i in range(1, max(span, 0) + 1))
    assert cal.business_days_between(start, end) == walked


@given(
    start=st.datetimes(
        datetime(2025, 1, 1),
        datetime(2027, 12, 31),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]
        ),
    ),
    days=st.integers(-3, 60),
    holidays=st.lists(st.dates(date(2025, 1, 1), date(2028, 12, 31)), max_size=12),
)
def test_add_business_days_lands_where_a_walk_day_by_day_lands(
    start: datetime, days: int, holidays: list[date]
) -> None:
    """Whole weeks jumped, the rest walked, then a business day more for each holiday on
    a weekday among them: the instant a walk a day at a time reaches (same time of day,
    same offset), with holidays clustered, on weekends, or on the last day."""
    cal = BusinessCalendar.of([*holidays, *(h + timedelta(days=1) for h in holidays[:3])])
    moment, remaining = start, days
    while remaining > 0:
        moment += timedelta(days=1)
        if cal.is_business_day(moment.date()):
            remaining -= 1
    got = cal.add_business_days(start, days)
    assert got == moment
    assert got.tzinfo is start.tzinfo
    assert got.timetz() == start.timetz()
