"""Calendar and business days (Monday to Friday, minus an optional holiday list).

Pure: no clock. Times are timezone-aware; business days are counted on the dates of
the instants as given (each event's own offset), holidays as ISO dates.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal


def _build(holidays: tuple[str | date, ...]) -> BusinessCalendar:
    days = frozenset(d if isinstance(d, date) else date.fromisoformat(d) for d in holidays)
    return BusinessCalendar(days)


_calendar = functools.lru_cache(maxsize=64)(_build)  # a policy's calendar, built once

Unit = Literal["calendar", "business"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def instant_key(at: datetime) -> int:
    """An instant as microseconds since 1970 (UTC): what to sort and compare instants by
    where many are. Events keep the offset their CRM wrote (it names their local day),
    and CPython compares two aware datetimes whose offsets are different objects ~20x
    slower than two in one (each side's `utcoffset` called, new datetimes made): with
    CRMs in several offsets, an index of instants spent most of its time comparing.
    Exact (datetimes hold whole microseconds); equal for the same instant in any offset."""
    return (at - EPOCH) // MICROSECOND


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    holidays: frozenset[date] = field(default_factory=frozenset)

    @classmethod
    def of(cls, holidays: Iterable[str | date] = ()) -> BusinessCalendar:
        return _calendar(tuple(holidays))

    def is_business_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def business_days_between(self, start: date, end: date) -> int:
        """Business days d with start < d <= end (0 if end <= start): five a whole week,
        the weekdays of the days left over, less the holidays between that fall on one
        (counted, not walked day by day: the metrics take it for every decision)."""
        if end <= start:
            return 0
        weeks, rest = divmod((end - start).days, 7)
        after = start.weekday() + 1  # the weekday of the first day counted
        count = weeks * 5 + sum(1 for i in range(after, after + rest) if i % 7 < 5)
        if self.holidays:
            count -= sum(1 for h in self.holidays if start < h <= end and h.weekday() < 5)
        return count

    def add_business_days(self, start: datetime, days: int) -> datetime:
        """The instant `days` business days after `start`, at the same time of day: on
        the `days`-th business day after its date. Whole weeks are jumped (any seven days
        in a row hold five weekdays), the rest walked; then as many business days more as
        there were holidays on weekdays among them (in business days the alert rules take
        a deadline two or three times per event: ~5 us walked day by day, 0.8 us so)."""
        if days <= 0:
            return start
        day = start.date()
        weeks = (days - 1) // 5
        ahead = 7 * weeks  # days after `day`
        remaining = days - 5 * weeks  # 1 to 5 weekdays still to pass
        weekday = (day.weekday() + ahead) % 7
        while remaining > 0:
            ahead += 1
            weekday = (weekday + 1) % 7
            if weekday < 5:
                remaining -= 1
        if self.holidays:
            end = day + timedelta(days=ahead)
            missing = sum(1 for h in self.holidays if day < h <= end and h.weekday() < 5)
            while missing > 0:
                ahead += 1
                if self.is_business_day(day + timedelta(days=ahead)):
                    missing -= 1
        return start + timedelta(days=ahead)

    def deadline(self, start: datetime, days: int, unit: Unit) -> datetime:
        """When something started at `start` becomes `days` (calendar or business) old."""
        if unit == "business":
            return self.add_business_days(start, days)
        return start + timedelta(days=days)

    def age(self, start: datetime, as_of: datetime, unit: Unit) -> float:
        """Age of `start` at `as_of`: calendar days (fractional), or whole business days."""
        if unit == "business":
            return float(self.business_days_between(start.date(), as_of.date()))
        return (as_of - start).total_seconds() / 86400
