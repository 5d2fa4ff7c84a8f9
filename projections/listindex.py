"""Indexes of the open pipeline and of the overdue list, kept as request states change
(issue 11), so that a page of `/pipeline` or `/overdue` costs what the page holds, not
what the ledger holds.

Each request is reduced to an `Entry`, read straight off its changelog JSON (no pydantic
model): what the two lists sort and filter by. The open requests are kept sorted in the
pipeline's order, and each overdue rule's candidates by the instant or day they fall
due, so "overdue as of t" is a prefix of each. Valid for an instant at or after the
newest event the index holds (`covers`): earlier, a request may have been in another
state, and the views refold it (`projections.views`, which these answers equal).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from heapq import heappop, heappush, merge
from itertools import groupby, islice
from typing import Any, NamedTuple

import orjson
from sortedcontainers import SortedList

from ledger.rules.calendar import BusinessCalendar, Unit, instant_key
from ledger.rules.policy import Policy
from projections.metricsindex import policy_tag
from projections.state import RequestState, last_decision_of, newest_of, record_head, with_field
from projections.views import (
    Row,
    calendar_of,
    days_over,
    latest_assessment,
    past_date,
    pipeline_row,
)


@dataclass(frozen=True, slots=True)
class Entry:
    request_id: str
    owner: str
    kind: str
    title: str
    stage: str  # intake, scored or decided
    opened: str  # the decision clock's start, as the pipeline shows it
    decision_due: datetime | None  # open: when it becomes overdue
    hold_due: datetime | None  # a standing hold: when it becomes overdue
    revisit_on: date | None  # a standing conditional no or hold: its revisit date
    review_on: date | None  # a standing provisional yes: its pilot review date
    newest_at: datetime  # its latest event's occurred_at
    # its latest score's adjusted F.A.I.R. score and recommendation, as the projector
    # wrote them into its record (`with_assessment`); None: not there, read the state
    assessed: tuple[float | None, str | None] | None = None
    opened_key: int = 0  # the decision clock's start as the pipeline sorts it (`instant_key`)

    def pipeline_row(self, as_of: datetime, cal: BusinessCalendar) -> Row | None:
        """Its row of the pipeline (`views.pipeline`'s), None: not open, or not assessed."""
        if self.stage == "decided" or self.assessed is None:
            return None
        started = datetime.fromisoformat(self.opened)
        return pipeline_row(self.request_id, self.kind, self.title, self.owner, self.stage,
                            started, as_of, cal, *self.assessed, opened=self.opened)  # fmt: skip


def not_open(entry: Entry) -> bool:
    """Nothing for the pipeline at any instant its state holds (`views.pipeline`: open
    requests only)."""
    return entry.stage == "decided"


def never_due(entry: Entry) -> bool:
    """Nothing for the overdue list at any instant, under any threshold: what
    `views.overdue_reasons` checks, none there (an open request always has a deadline)."""
    return (
        entry.decision_due is None
        and entry.hold_due is None
        and entry.revisit_on is None
        and entry.review_on is None
    )


Sorted = Any  # a `SortedList` of (key, request_id) tuples (the library has no types)
ASSESSED_KEY = "latest_assessment"


def with_assessment(state_json: bytes, state: RequestState, policy: Policy, tag: str) -> bytes:
    """A request state's JSON with its latest assessment first, under `ASSESSED_KEY`
    (`views.latest_assessment`, under the policy `tag` names): the projector writes it,
    which has the state in hand, so a pipeline's rows come from the index's entries
    without parsing a state back into objects (the whole list of 22 k open requests:
    seconds, and the GIL other requests wait on)."""
    return with_field(
        state_json, ASSESSED_KEY, orjson.dumps([tag, *latest_assessment(state, policy)])
    )


def _assessed(s: dict[str, Any], tag: str) -> tuple[float | None, str | None] | None:
    shipped = s.get(ASSESSED_KEY)
    if type(shipped) is not list or len(shipped) != 3 or shipped[0] != tag:
        return None
    _, adjusted, recommendation = shipped
    if adjusted is None and recommendation is None:
        return None, None
    if type(adjusted) not in (int, float) or type(recommendation) is not str:
        return None
    return float(adjusted), recommendation


def entry_of(
    s: dict[str, Any], policy: Policy, days: int, unit: Unit, tag: str | None = None
) -> Entry:
    """A request's entry from its state's JSON, parsed (`orjson.loads`); its assessment
    read off it when taken under the policy `tag` names."""
    intake = s["intake"]
    status = s["status"]
    stage = "decided" if status == "decided" else "scored" if s["score"] is not None else "intake"
    started = datetime.fromisoformat(s["clock_started_at"])
    newest = newest_of(s)
    cal = calendar_of(policy)
    decision_due = hold_due = None
    revisit_on = review_on = None
    last = last_decision_of(s)
    if status == "open":
        decision_due = cal.deadline(started, days, unit)
    elif last is not None:
        outcome = last["outcome"]
        if outcome == "hold":
            hold_due = cal.deadline(datetime.fromisoformat(last["occurred_at"]), days, unit)
        if outcome in ("conditional_no", "hold") and last["revisit_on"] is not None:
            revisit_on = date.fromisoformat(last["revisit_on"])
        if outcome == "provisional_yes" and last["review_on"] is not None:
            review_on = date.fromisoformat(last["review_on"])
    return Entry(
        request_id=s["request_id"], owner=intake["owner"], kind=intake["kind"],
        title=intake["title"], stage=stage, opened=started.isoformat(),
        decision_due=decision_due, hold_due=hold_due, revisit_on=revisit_on,
        review_on=review_on, newest_at=newest,
        assessed=None if tag is None else _assessed(s, tag), opened_key=instant_key(started),
    )  # fmt: skip


class ListIndex:
    """Every request's entry, and the sorted lists the pipeline and overdue read."""

    def __init__(self, policy: Policy, days: int, unit: Unit) -> None:
        self.policy = policy
        self.tag = policy_tag(policy)
        self.days = days
        self.unit = unit
        self.entries: dict[str, Entry] = {}
        # sorted lists of (key, request_id), each kept in order as entries change: a
        # SortedList adds and removes in O(log n) (a list's insort moved every later item:
        # a fifth of the API's CPU at 1 M events); instants as `instant_key`s, which
        # compare as fast whatever offsets the requests' CRMs wrote
        self.open: Sorted = SortedList()  # (opened_key, request_id): the pipeline's order
        self.decision_due: Sorted = SortedList()  # (instant_key, request_id)
        self.hold_due: Sorted = SortedList()
        self.revisit_on: Sorted = SortedList()  # (date, request_id)
        self.review_on: Sorted = SortedList()
        self.newest_at: datetime | None = None
        # the lists by their place in an entry's `_items` (a SortedList compares equal
        # to another holding the same items: compared by place, never by value)
        self._all = (self.open, self.decision_due, self.hold_due, self.revisit_on,
                     self.review_on)  # fmt: skip

    def put(self, request_id: str, raw: bytes | None) -> None:
        """The request's new state (None: gone)."""
        self.put_parsed(request_id, None if raw is None else record_head(raw))

    def put_parsed(self, request_id: str, state: dict[str, Any] | None) -> None:
        """`put`, of the state's JSON already parsed (`orjson.loads`). Only the lists
        whose item for the request changes are touched: most events move a request in
        one list or none (a score changes no key; a decision takes it out of the open
        lists), and adding and removing in the sorted lists was a fifth of the API's CPU
        in the replay of the million (py-spy)."""
        old = self.entries.pop(request_id, None)
        entry = None
        if state is not None:
            entry = entry_of(state, self.policy, self.days, self.unit, self.tag)
            self.entries[request_id] = entry
            if self.newest_at is None or entry.newest_at > self.newest_at:
                self.newest_at = entry.newest_at
        before = () if old is None else _items(old)
        after = () if entry is None else _items(entry)
        if before == after:
            return
        lists = self._all
        for pair in before:
            if pair not in after:
                lists[pair[0]].discard(pair[1])
        for pair in after:
            if pair not in before:
                lists[pair[0]].add(pair[1])

    def entry(self, raw: bytes) -> Entry:
        """A request's entry from its state's JSON, under this index's rules."""
        return self.entry_parsed(record_head(raw))

    def entry_parsed(self, state: dict[str, Any]) -> Entry:
        """`entry`, of the state's JSON already parsed."""
        return entry_of(state, self.policy, self.days, self.unit, self.tag)

    def put_entries(self, entries: dict[str, Entry | None]) -> None:
        """Many requests' new entries at once (None: gone): what `put` does for each,
        with each list sorted once at the end instead of an insertion per entry (a read
        model catching up indexes every request at once)."""
        for request_id in entries:  # first every removal: they bisect the sorted lists
            old = self.entries.pop(request_id, None)
            if old is not None:
                self._lists(old, _remove)
        added: dict[int, list[Any]] = {}  # by list, its new items: each list updated once
        for request_id, entry in entries.items():
            if entry is None:
                continue
            self.entries[request_id] = entry
            self._lists(entry, lambda items, item: added.setdefault(id(items), []).append(item))
            if self.newest_at is None or entry.newest_at > self.newest_at:
                self.newest_at = entry.newest_at
        for items in (self.open, self.decision_due, self.hold_due, self.revisit_on,
                      self.review_on):  # fmt: skip
            items.update(added.get(id(items), ()))

    def _lists(self, e: Entry, act: Any) -> None:
        lists = self._all
        for at, item in _items(e):
            act(lists[at], item)

    def covers(self, as_of: datetime) -> bool:
        """Whether the lists hold as of `as_of`: no event the index holds is later."""
        return self.newest_at is None or as_of >= self.newest_at

    def open_requests(
        self, owner: str | None = None, kind: str | None = None, stage: str | None = None
    ) -> list[str]:
        """The open requests in the pipeline's order (oldest first), filtered."""
        if not (owner or kind or stage):
            return [request_id for _, request_id in self.open]
        out = []
        for _, request_id in self.open:
            e = self.entries[request_id]
            if (owner and e.owner != owner) or (kind and e.kind != kind):
                continue
            if stage and e.stage != stage:
                continue
            out.append(request_id)
        return out

    def overdue(self, as_of: datetime) -> list[Row]:
        """`views.overdue` as of `as_of` (which `covers` must allow), from the lists."""
        return [self.overdue_row(o) for o in self.overdue_order(as_of)]

    def overdue_order(self, as_of: datetime) -> list[Overdue]:
        """The overdue list's order and what orders it, without building its rows."""
        return list(self.iter_overdue(as_of))

    def overdue_count(self, as_of: datetime) -> int:
        """How many rows the overdue list has as of `as_of`: prefixes' lengths, O(log n)."""
        day = (as_of.date(), "")
        return sum(
            _count_before(items, as_of) for items in (self.decision_due, self.hold_due)
        ) + sum(int(days.bisect_left(day)) for days in (self.revisit_on, self.review_on))

    def iter_overdue(self, as_of: datetime) -> Iterator[Overdue]:
        """The overdue list in its order, lazily: most overdue first, then by request and
        reason. Each rule's candidates are sorted by when they fell due, and how overdue
        one is never grows with a later due, so each rule's list is already in order but
        for ties, which are sorted as they come; the four are merged. Taking the first k
        rows costs about k (plus the ties at the k-th), not the whole list."""
        cal = calendar_of(self.policy)

        def due(reason: str, items: Sorted, field: str) -> Iterator[Overdue]:
            # strictly after the deadline: a prefix of the list sorted by deadline (the
            # deadline itself, in its own offset, is the entry's)
            for _, request_id in islice(items, _count_before(items, as_of)):
                at = getattr(self.entries[request_id], field)
                over = days_over(cal, at, as_of, self.unit)
                yield Overdue(-over, request_id, reason, at)

        def due_in_order(reason: str, items: Sorted, field: str) -> Iterator[Overdue]:
            if self.unit != "business":  # calendar days: fewer the later the deadline
                return due(reason, items, field)
            return _in_local_day_order(due(reason, items, field), cal, as_of)

        def dated(reason: str, days: Sorted) -> Iterator[Overdue]:
            for day, request_id in islice(days, days.bisect_left((as_of.date(), ""))):
                for _, since, over in past_date(reason, day, as_of):
                    yield Overdue(-over, request_id, reason, since)

        streams = [
            due_in_order("decision_overdue", self.decision_due, "decision_due"),
            due_in_order("hold_overdue", self.hold_due, "hold_due"),
            dated("revisit_overdue", self.revisit_on),
            dated("pilot_review_overdue", self.review_on),
        ]  # fmt: skip
        return merge(*(_ties_sorted(stream) for stream in streams))

    def overdue_row(self, o: Overdue) -> Row:
        e = self.entries[o.request_id]
        return {
            "request_id": o.request_id, "reason": o.reason, "owner": e.owner, "title": e.title,
            "overdue_since": o.since.isoformat(), "days_overdue": -o.minus_days,
        }  # fmt: skip


class Overdue(NamedTuple):
    """One overdue row's place in the list (most overdue first, then by request, reason)."""

    minus_days: float
    request_id: str
    reason: str
    since: datetime


def _ties_sorted(stream: Iterator[Overdue]) -> Iterator[Overdue]:
    """A stream in order of `minus_days` made fully sorted: each run of ties sorted."""
    for _, ties in groupby(stream, key=lambda o: o.minus_days):
        yield from sorted(ties)


def _in_local_day_order(
    stream: Iterator[Overdue], cal: BusinessCalendar, as_of: datetime
) -> Iterator[Overdue]:
    """Rows of deadlines in instant order, yielded in the list's order (most overdue
    first, then by request). In business days a row's overdue days count from its
    deadline's date in the deadline's own offset, which is at most a day off the date in
    UTC that instant order follows: with CRMs in several offsets, a later deadline can be
    more overdue. So rows wait in a heap until no later deadline can be as overdue (its
    local date is at least the day before the UTC date reached): still lazy, a page
    costs its rows and a day's worth more."""
    waiting: list[Overdue] = []
    for row in stream:
        heappush(waiting, row)
        earliest_local = row.since.astimezone(UTC).date() - timedelta(days=1)
        most_to_come = -float(cal.business_days_between(earliest_local, as_of.date()))
        while waiting and waiting[0].minus_days < most_to_come:
            yield heappop(waiting)
    while waiting:
        yield heappop(waiting)


def _count_before(items: Sorted, as_of: datetime) -> int:
    """How many entries fall due before `as_of` (every request id sorts after "")."""
    return int(items.bisect_left((instant_key(as_of), "")))


def _items(e: Entry) -> tuple[tuple[int, Any], ...]:
    """The (list, item) pairs that stand for an entry: each list by its place in
    `ListIndex._all` (open, decision due, hold due, revisit on, review on)."""
    request_id = e.request_id
    pairs: list[tuple[int, Any]] = []
    if e.stage != "decided":
        pairs.append((0, (e.opened_key, request_id)))
    if e.decision_due is not None:
        pairs.append((1, (instant_key(e.decision_due), request_id)))
    if e.hold_due is not None:
        pairs.append((2, (instant_key(e.hold_due), request_id)))
    if e.revisit_on is not None:
        pairs.append((3, (e.revisit_on, request_id)))
    if e.review_on is not None:
        pairs.append((4, (e.review_on, request_id)))
    return tuple(pairs)


def _remove(items: Sorted, item: Any) -> None:
    items.discard(item)
