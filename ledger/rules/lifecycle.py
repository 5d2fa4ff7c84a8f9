"""The request lifecycle: which events a request (or customer) may accept next.

Pure: `admit(state, fact)` takes the subject's state and one event's facts and returns
the next state, or the reason the event is refused. The validator worker keeps the
state in a changelogged table keyed by subject; nothing here touches Kafka.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from events.schema import AnyEvent

Status = Literal["new", "open", "decided"]


class Violation(StrEnum):
    """Machine-readable reasons a valid event is still refused."""

    DUPLICATE_EVENT_ID = "duplicate_event_id"
    DUPLICATE_INTAKE = "duplicate_intake"
    UNKNOWN_REQUEST = "unknown_request"
    SCALED_WITHOUT_PROVISIONAL_YES = "scaled_without_provisional_yes"
    REVISIT_OF_UNDECIDED_REQUEST = "revisit_of_undecided_request"


# Refusals that can stop holding once an earlier event of the subject arrives: an event
# that overtook its predecessor (a CRM publishing unkeyed) is held, not refused, for a
# grace period.
PREMATURE = frozenset(
    {
        Violation.UNKNOWN_REQUEST,
        Violation.REVISIT_OF_UNDECIDED_REQUEST,
        Violation.SCALED_WITHOUT_PROVISIONAL_YES,
    }
)
MAX_HELD = 200  # per subject: past it, a premature event is refused at once


@dataclass(frozen=True, slots=True)
class Fact:
    """What the lifecycle needs to know of one event."""

    event_id: str
    type: str
    subject: str
    outcome: str | None = None

    @classmethod
    def of(cls, event: AnyEvent) -> Fact:
        if event.type == "escalation":
            return cls(str(event.event_id), event.type, event.data.customer_id)
        outcome = event.data.outcome if event.type == "decision" else None
        return cls(str(event.event_id), event.type, event.data.request_id, outcome)

    def to_json(self) -> list[str | None]:
        """Its compact JSON form (in a held event, and in the header screening sends)."""
        return [self.event_id, self.type, self.subject, self.outcome]

    @classmethod
    def from_json(cls, obj: list[str | None]) -> Fact:
        event_id, kind, subject, outcome = obj
        return cls(str(event_id), str(kind), str(subject), outcome)

    @classmethod
    def of_validated_json(cls, obj: Mapping[str, Any]) -> Fact:
        """Read the facts from a payload that already passed `events.decode`."""
        data = obj["data"]
        kind = obj["type"]
        subject = data["customer_id"] if kind == "escalation" else data["request_id"]
        return cls(str(UUID(obj["event_id"])), kind, subject, data.get("outcome"))


@dataclass(frozen=True, slots=True)
class Held:
    """An event waiting for an earlier event of its subject, with where it came from."""

    fact: Fact
    occurred: float  # its occurred_at, as epoch seconds (held events are retried in order)
    value: str  # the event's JSON as sent, to record it as it is once admissible
    key: str | None  # inbox key, partition and offset
    partition: int
    offset: int
    since: float  # epoch seconds when it was first held
    reason: Violation

    def order(self) -> tuple[float, str]:
        return (self.occurred, self.fact.event_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "fact": self.fact.to_json(),
            "occurred": self.occurred,
            "value": self.value,
            "inbox": [self.key, self.partition, self.offset],
            "since": self.since,
            "reason": self.reason.value,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Held:
        key, partition, offset = obj["inbox"]
        return cls(
            Fact.from_json(obj["fact"]), obj["occurred"], obj["value"], key, partition, offset,
            obj["since"], Violation(obj["reason"]),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SubjectState:
    """A request's (or customer's) lifecycle so far, every event id it has recorded, and
    the last inbox offset judged per inbox partition (to tell a redelivery from a new
    message: the inbox is at-least-once, and a replayed message was judged already)."""

    status: Status = "new"
    had_provisional_yes: bool = False
    event_ids: frozenset[str] = field(default_factory=frozenset)
    judged: Mapping[int, int] = field(default_factory=dict)
    held: tuple[Held, ...] = ()

    def already_judged(self, partition: int, offset: int) -> bool:
        """Whether this inbox message (by position) was accepted or refused before."""
        last = self.judged.get(partition)
        return last is not None and offset <= last

    def judging(self, partition: int, offset: int) -> SubjectState:
        """This state, remembering that the inbox message at `offset` was judged."""
        if self.already_judged(partition, offset):
            return self
        judged = {**self.judged, partition: offset}
        return SubjectState(
            self.status, self.had_provisional_yes, self.event_ids, judged, self.held
        )

    def recording(self, fact: Fact) -> SubjectState:
        """This state with `fact` recorded as admitted (no rule checked: it was admitted
        before, and is read back from the ledger). Idempotent."""
        if fact.event_id in self.event_ids:
            return self
        return _advance(self, fact)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "had_provisional_yes": self.had_provisional_yes,
            "event_ids": sorted(self.event_ids),
            "judged": {str(p): o for p, o in self.judged.items()},
            **({"held": [h.to_json() for h in self.held]} if self.held else {}),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> SubjectState:
        if not obj:
            return cls()
        judged = {int(p): int(o) for p, o in obj.get("judged", {}).items()}
        held = tuple(Held.from_json(h) for h in obj.get("held", ()))
        return cls(
            obj["status"], obj["had_provisional_yes"], frozenset(obj["event_ids"]), judged, held
        )

    def without_held(self, partition: int, offset: int) -> SubjectState:
        """This state, no longer holding the inbox message at that position."""
        kept = tuple(h for h in self.held if (h.partition, h.offset) != (partition, offset))
        return self if len(kept) == len(self.held) else replace(self, held=kept)


@dataclass(frozen=True, slots=True)
class Refusal:
    code: Violation
    message: str


def admit(state: SubjectState, fact: Fact) -> SubjectState | Refusal:
    """Accept `fact` (returning the next state) or refuse it (returning why)."""
    if fact.event_id in state.event_ids:
        return Refusal(
            Violation.DUPLICATE_EVENT_ID, f"event_id {fact.event_id} is already recorded"
        )
    refusal = _lifecycle_refusal(state, fact)
    if refusal is not None:
        return refusal
    return _advance(state, fact)


def _lifecycle_refusal(state: SubjectState, fact: Fact) -> Refusal | None:
    if fact.type == "escalation":
        return None
    request = fact.subject
    if fact.type == "intake":
        if state.status != "new":
            return Refusal(Violation.DUPLICATE_INTAKE, f"request {request} already has an intake")
        return None
    if state.status == "new":
        return Refusal(
            Violation.UNKNOWN_REQUEST, f"request {request} has no intake; {fact.type} refused"
        )
    if fact.type == "decision" and fact.outcome == "scaled" and not state.had_provisional_yes:
        return Refusal(
            Violation.SCALED_WITHOUT_PROVISIONAL_YES,
            f"request {request} cannot be scaled: it never had a provisional_yes",
        )
    if fact.type == "revisit" and state.status != "decided":
        return Refusal(
            Violation.REVISIT_OF_UNDECIDED_REQUEST,
            f"request {request} has no standing decision to revisit",
        )
    return None


def _advance(state: SubjectState, fact: Fact) -> SubjectState:
    """`state` with `fact` recorded: its id kept, and the status it moves the subject to.
    One constructor call, not `dataclasses.replace` (the validator's hot path)."""
    status, had_yes = state.status, state.had_provisional_yes
    if fact.type == "intake" or fact.type == "revisit":
        status = "open"
    elif fact.type == "decision":
        status = "decided"
        had_yes = had_yes or fact.outcome == "provisional_yes"
    event_ids = state.event_ids | {fact.event_id}
    return SubjectState(status, had_yes, event_ids, state.judged, state.held)


def may_hold(state: SubjectState, refusal: Refusal) -> bool:
    """Whether a refused event should rather wait for its predecessor."""
    return refusal.code in PREMATURE and len(state.held) < MAX_HELD


def hold(state: SubjectState, held: Held) -> SubjectState:
    """`state`, holding `held` until an earlier event of its subject arrives."""
    return replace(state, held=(*state.held, held))


Released = tuple[SubjectState, list[Held], list[tuple[Held, Refusal]]]


def release(state: SubjectState) -> Released:
    """Judge the held events again, oldest `occurred_at` first, until none moves: (the
    new state, the events now admitted in order, those now refused for good)."""
    admitted: list[Held] = []
    refused: list[tuple[Held, Refusal]] = []
    moved = True
    while moved and state.held:
        moved = False
        for held in sorted(state.held, key=Held.order):
            rest = tuple(h for h in state.held if h is not held)
            verdict = admit(state, held.fact)
            if isinstance(verdict, SubjectState):
                state = replace(verdict, held=rest)
                admitted.append(held)
            elif verdict.code not in PREMATURE:
                state = replace(state, held=rest)
                refused.append((held, verdict))
            else:
                continue
            moved = True
            break
    return state, admitted, refused


def expire(state: SubjectState, now: float, grace_s: float) -> tuple[SubjectState, list[Held]]:
    """Stop holding the events held for longer than `grace_s`: (new state, the expired)."""
    expired = [h for h in state.held if now - h.since >= grace_s]
    if not expired:
        return state, []
    return replace(state, held=tuple(h for h in state.held if h not in expired)), expired
