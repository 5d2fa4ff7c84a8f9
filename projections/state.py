"""Per-subject read-model state: one request, one customer. Folds over `ledger.events`.

Each fold is `apply(state, event) -> state`: pure, total over the event union (an event
of another kind leaves the state as it is), and idempotent by `event_id` (the state
remembers the ids it has applied). The folds build their records with `_built`, without
validation: every value comes from an event pydantic has already validated (at the edge,
where the bytes came in), and validating again cost a quarter of the fold's time. States
are frozen pydantic models, so a worker stores them as JSON and reads them back: a
customer's whole (`model_dump_json`, `model_validate_json`), a request's as its history
after a lean head (`request_json`), folded again when read (`request_from_json`); their
instants carry a stdlib `timezone` (see `events.schema.Instant`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, TypeVar, cast
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter

from events.schema import (
    AnyEvent,
    Event,
    Instant,
    IntakeData,
    ScoreData,
    SharedFieldsSet,
    shared_fields_set,
)

PILOT_REVIEW_DEFAULT = timedelta(days=45)
M = TypeVar("M", bound=BaseModel)


class _Frozen(SharedFieldsSet):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimelineEntry(_Frozen):
    event_id: str
    type: str
    occurred_at: Instant
    actor: str | None
    summary: str


class DecisionRecord(_Frozen):
    event_id: str
    occurred_at: Instant
    outcome: str
    rationale: str
    cycle_started_at: Instant  # when the decision clock started (first contact or revisit)
    revisit_on: date | None = None
    review_on: date | None = None
    score: ScoreData | None = None  # the latest score when it was decided


class RequestState(_Frozen):
    """A request as folded from its events. Its `timeline` and `event_ids` are read off
    its `history` rather than stored beside it (a fifth of its JSON and more of its
    objects, written to the changelog at every change); a state stored while they were
    still fields loads as well (their keys are ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: str
    intake: IntakeData
    opened_at: Instant  # first contact
    clock_started_at: Instant  # first contact, or the last revisit
    status: Literal["open", "decided"] = "open"
    score: ScoreData | None = None
    scored_at: Instant | None = None
    decisions: tuple[DecisionRecord, ...] = ()
    revisits: int = 0
    history: tuple[Event, ...] = ()  # the events applied, in fold order (for as_of views)

    @property
    def timeline(self) -> tuple[TimelineEntry, ...]:
        """One line per event, in fold order."""
        return tuple(_entry(e, str(e.event_id), _summary(e)) for e in self.history)

    @property
    def event_ids(self) -> frozenset[str]:
        return frozenset(str(e.event_id) for e in self.history)

    def holds(self, event: AnyEvent) -> bool:
        """Whether this event is folded in already."""
        event_id = event.event_id
        return any(e.event_id == event_id for e in self.history)

    @property
    def stage(self) -> Literal["intake", "scored", "decided"]:
        if self.status == "decided":
            return "decided"
        return "scored" if self.score is not None else "intake"

    @property
    def last_decision(self) -> DecisionRecord | None:
        return self.decisions[-1] if self.decisions else None


class EscalationRecord(_Frozen):
    event_id: str
    occurred_at: Instant
    partner_id: str
    kind: str
    severity: int
    request_id: str | None = None
    summary: str | None = None


class CustomerState(_Frozen):
    customer_id: str
    escalations: tuple[EscalationRecord, ...] = ()
    event_ids: frozenset[str] = frozenset()

    def as_of(self, instant: datetime) -> CustomerState | None:
        """This customer as the ledger knew it at `instant` (None: nothing yet)."""
        kept = tuple(e for e in self.escalations if e.occurred_at <= instant)
        if len(kept) == len(self.escalations):
            return self
        if not kept:
            return None
        return _replaced(self, escalations=kept, event_ids=frozenset(e.event_id for e in kept))


_NO_DEFAULT = object()


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Every field, in declaration order, with its default (`_NO_DEFAULT`: required)."""
    defaults = {}
    for name, info in model.model_fields.items():
        assert info.default_factory is None, name  # noqa: S101 - immutable defaults only
        defaults[name] = _NO_DEFAULT if info.is_required() else info.default
    return defaults


_DEFAULTS: dict[type[BaseModel], dict[str, Any]] = {}
# the fields set of each model built from each list of names (`_built`), and of each
# fields set with each list of names replaced (`_replaced`): a dict lookup per state made,
# where a set union, a frozenset and its hash were (the fold ~10 -> ~9 us per event)
_BUILT_SETS: dict[tuple[type[BaseModel], tuple[str, ...]], set[str]] = {}
_REPLACED_SETS: dict[tuple[type[BaseModel], int, tuple[str, ...]], tuple[set[str], set[str]]] = {}
MAX_SETS = 4096  # a model has few combinations of the fields it is given


def _built(model: type[M], **values: Any) -> M:
    """`model(**values)` without validating them again: what pydantic's `model_construct`
    does, less its per-call default handling (our defaults are immutable). Fields in
    declaration order, so the JSON is byte for byte a validated model's."""
    defaults = _DEFAULTS.get(model)
    if defaults is None:
        defaults = _DEFAULTS[model] = _defaults(model)
    given = (model, tuple(values))
    names = _BUILT_SETS.get(given)
    if names is None:
        missing = [n for n, d in defaults.items() if d is _NO_DEFAULT and n not in values]
        unknown = values.keys() - defaults.keys()
        if missing or unknown:
            raise TypeError(f"{model.__name__}: missing {missing}, unknown {sorted(unknown)}")
        names = shared_fields_set(model, values.keys())
        if len(_BUILT_SETS) < MAX_SETS:
            _BUILT_SETS[given] = names
    fields = {name: values.get(name, default) for name, default in defaults.items()}
    return _made(model, fields, names)


def _made(model: type[M], fields: dict[str, Any], names: set[str]) -> M:
    """An instance of `model` holding `fields`, its fields set `names` (a shared one)."""
    built = model.__new__(model)
    object.__setattr__(built, "__dict__", fields)
    object.__setattr__(built, "__pydantic_fields_set__", names)
    object.__setattr__(built, "__pydantic_extra__", None)
    object.__setattr__(built, "__pydantic_private__", None)
    return built


def _replaced(state: M, **update: Any) -> M:
    """`state.model_copy(update=update)`, its fields-set shared (`shared_fields_set`)."""
    model = type(state)
    given = state.__pydantic_fields_set__
    key = (model, id(given), tuple(update))
    held = _REPLACED_SETS.get(key)
    if held is not None and held[0] is given:  # held: its id is not reused meanwhile
        names = held[1]
    else:
        names = shared_fields_set(model, given | update.keys())
        if len(_REPLACED_SETS) < MAX_SETS:
            _REPLACED_SETS[key] = (given, names)
    return _made(model, {**state.__dict__, **update}, names)


def _entry(event: AnyEvent, event_id: str, summary: str) -> TimelineEntry:
    return _built(
        TimelineEntry,
        event_id=event_id,
        type=event.type,
        occurred_at=event.occurred_at,
        actor=event.actor,
        summary=summary,
    )


def fold_order(event: AnyEvent) -> tuple[bool, datetime, UUID]:
    """The order a request's events are folded in, whatever order they arrived in: its
    intake first (nothing folds before it), then by `occurred_at`, ties by `event_id`
    (UUIDs order as their canonical text does, without the cost of making the text)."""
    return (event.type != "intake", event.occurred_at, event.event_id)


def apply_request(state: RequestState | None, event: AnyEvent) -> RequestState | None:
    """Fold one event into a request's state (`None` until its intake).

    An event that arrives after one it precedes in `fold_order` refolds the request's
    history in that order, so the state never depends on arrival order."""
    if event.type == "escalation" or (state is not None and state.holds(event)):
        return state
    if state is not None and fold_order(event) < fold_order(state.history[-1]):
        refolded: RequestState | None = None
        for earlier in sorted((*state.history, event), key=fold_order):
            refolded = _apply_in_order(refolded, earlier)
        return refolded
    return _apply_in_order(state, event)


def _apply_in_order(state: RequestState | None, event: AnyEvent) -> RequestState | None:
    """`apply_request` for an event that comes after every event `state` holds."""
    if event.type == "escalation":
        return state
    if event.type == "intake":
        if state is not None:
            return state  # a second intake never passes the validator
        data = event.data
        opened = data.first_contact_at or event.occurred_at
        return _built(
            RequestState,
            request_id=data.request_id,
            intake=data,
            opened_at=opened,
            clock_started_at=opened,
            history=(event,),
        )
    if state is None:
        return None  # never in the ledger: the validator admits nothing before an intake
    history = (*state.history, event)
    if event.type == "score":
        return _replaced(state, score=event.data, scored_at=event.occurred_at, history=history)
    if event.type == "decision":
        d = event.data
        review_on = None
        if d.pilot is not None:
            review_on = d.pilot.review_on or (event.occurred_at + PILOT_REVIEW_DEFAULT).date()
        record = _built(
            DecisionRecord,
            event_id=str(event.event_id),
            occurred_at=event.occurred_at,
            outcome=d.outcome,
            rationale=d.rationale,
            cycle_started_at=state.clock_started_at,
            revisit_on=d.revisit_on,
            review_on=review_on,
            score=state.score,
        )
        return _replaced(
            state, status="decided", decisions=(*state.decisions, record), history=history
        )
    # revisit: the request is open again and its decision clock restarts
    return _replaced(
        state,
        status="open",
        clock_started_at=event.occurred_at,
        revisits=state.revisits + 1,
        history=history,
    )


HISTORY = b',"history":['  # the last field of a request's JSON
EVENT_ID = b'"event_id":'


def history_length(raw: bytes) -> int | None:
    """How many events a request's JSON holds in its history, read without parsing it:
    each names its `event_id` once and nothing after the history's key does otherwise (a
    quote inside a string is escaped). None: the JSON is not of that shape."""
    at = raw.rfind(HISTORY)
    return None if at < 0 else raw.count(EVENT_ID, at)


def with_field(state_json: bytes, name: str, value_json: bytes) -> bytes:
    """A state's JSON with one more key first (`name`, holding `value_json`): what the
    projector writes beside a request for the API (a state ignores keys it does not have,
    and a request's history stays last)."""
    return b'{"' + name.encode() + b'":' + value_json + b"," + state_json[1:]


def _fields_of(value: Any) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.__dict__  # its fields, in declaration order
    raise TypeError(f"{type(value).__name__} is not JSON")


def head_json(state: RequestState) -> bytes:
    """`state.model_dump_json(exclude={"history"})`, written by orjson: byte for byte the
    same JSON for what a state holds (models as objects in field order, instants in UTC
    with a Z, tuples as arrays) at two thirds of the cost."""
    fields = dict(state.__dict__)
    del fields["history"]
    return orjson.dumps(fields, default=_fields_of, option=orjson.OPT_UTC_Z)


LEAN_KEY = "lean"  # a lean record's first key (`lean_head_json`)
_LEAN = b'"' + LEAN_KEY.encode() + b'":1'
LAST_DECISION_KEY = "last_decision"
_EVENTS: TypeAdapter[tuple[AnyEvent, ...]] = TypeAdapter(tuple[Event, ...])


def lean_head_json(state: RequestState) -> bytes:
    """What a request's changelog record holds of it before its history, the rest being
    the fold of that history (`request_from_json` folds it back): what the indexes and the
    alert timer read off a record (its intake's owner, kind and title, its status, score
    and decision clock, and its standing decision as `last_decision`), under the same
    names and shapes as in a state's JSON. The whole head repeated the intake, every
    score and decision that the history holds already: ~1.35 of a record's ~2.7 KB,
    kept by every worker and API process for every request (issue 11's memory)."""
    intake = state.intake
    last = state.decisions[-1] if state.decisions else None
    head = {
        LEAN_KEY: 1,
        "request_id": state.request_id,
        "intake": {"owner": intake.owner, "kind": intake.kind, "title": intake.title},
        "status": state.status,
        "score": state.score,
        "clock_started_at": state.clock_started_at,
        LAST_DECISION_KEY: None if last is None else {
            "event_id": last.event_id, "occurred_at": last.occurred_at,
            "outcome": last.outcome, "revisit_on": last.revisit_on, "review_on": last.review_on,
        },
    }  # fmt: skip
    return orjson.dumps(head, default=_fields_of, option=orjson.OPT_UTC_Z)


def request_json(state: RequestState, before: bytes | None, appended: Sequence[bytes]) -> bytes:
    """The state's lean JSON (`lean_head_json`, then its history), written without
    serializing again the events its stored JSON already holds: `before` is the stored
    JSON of the state that `appended` (the events' bytes as recorded in `ledger.events`)
    were folded onto in order (None: there was none). The history keeps the events as
    written (recorded events leave their defaults out); `request_from_json` reads it back
    to the same state. Serializing a request's history was half the cost of writing its
    state. Falls back to the whole `model_dump_json` where the pieces do not add up to
    the state's history."""
    held, known = b"", 0
    if before is not None:
        length = history_length(before)
        if length is None or before[-2:] != b"]}":
            return state.model_dump_json().encode()
        held, known = before[before.rfind(HISTORY) + len(HISTORY) : -2], length
    if known + len(appended) != len(state.history):
        return state.model_dump_json().encode()
    head = lean_head_json(state)
    parts = [held, *appended] if held else list(appended)
    return head[:-1] + HISTORY + b",".join(parts) + b"]}"


def request_from_json(raw: bytes) -> RequestState:
    """A request's state from its JSON: a lean record (`request_json`) by folding its
    history again (as fast as pydantic reads a whole state's JSON: ~39 against ~41 us),
    any other (a whole state's JSON, a record written before lean ones) as pydantic reads
    it. ValueError (pydantic's ValidationError among them) if it is neither."""
    at = raw.rfind(HISTORY)
    if at > 0 and raw.find(_LEAN, 0, at) >= 0 and raw.endswith(b"]}"):
        state: RequestState | None = None
        for event in _EVENTS.validate_json(raw[at + len(HISTORY) - 1 : -1]):
            state = apply_request(state, event)
        if state is None:
            raise ValueError("a request's record whose history holds no intake")
        return state
    return RequestState.model_validate_json(raw)


def last_decision_of(s: dict[str, Any]) -> dict[str, Any] | None:
    """A request's standing decision, from its JSON parsed (`orjson.loads`): a lean
    record's `last_decision`, or the last of a whole state's `decisions`."""
    if LAST_DECISION_KEY in s:
        return cast(dict[str, Any] | None, s[LAST_DECISION_KEY])
    decisions = s["decisions"]
    return cast(dict[str, Any], decisions[-1]) if decisions else None


def _summary(event: AnyEvent) -> str:
    """An event's line in its request's timeline."""
    if event.type == "intake":
        return f"intake: {event.data.title}"
    if event.type == "score":
        s = event.data
        return f"score: F{s.fit} A{s.advantage} I{s.integrity} R{s.readiness}"
    if event.type == "decision":
        return f"decision: {event.data.outcome}"
    if event.type == "revisit":
        return f"revisit: {event.data.trigger}"
    return event.type


def apply_customer(state: CustomerState | None, event: AnyEvent) -> CustomerState | None:
    """Fold one escalation into its customer's state."""
    if event.type != "escalation":
        return state
    event_id = str(event.event_id)
    if state is not None and event_id in state.event_ids:
        return state
    e = event.data
    state = state or _built(CustomerState, customer_id=e.customer_id)
    record = _built(
        EscalationRecord,
        event_id=event_id,
        occurred_at=event.occurred_at,
        partner_id=e.partner_id,
        kind=e.kind,
        severity=e.severity,
        request_id=e.request_id,
        summary=e.summary,
    )
    escalations = (*state.escalations, record)
    if len(escalations) > 1 and _order(record) < _order(state.escalations[-1]):
        escalations = tuple(sorted(escalations, key=_order))  # arrived out of order
    return _replaced(state, escalations=escalations, event_ids=state.event_ids | {event_id})


def _order(record: EscalationRecord) -> tuple[datetime, str]:
    return (record.occurred_at, record.event_id)


def request_as_of(state: RequestState, instant: datetime) -> RequestState | None:
    """The request as the ledger knew it at `instant`: its events up to then, refolded."""
    if newest_event_at(state) <= instant:
        return state
    refolded: RequestState | None = None
    for event in state.history:
        if event.occurred_at <= instant:
            refolded = apply_request(refolded, event)
    return refolded


@dataclass(frozen=True, slots=True)
class StandingDecision:
    """What the alert rules read of a request's latest decision."""

    event_id: str
    occurred_at: datetime
    outcome: str
    revisit_on: date | None
    review_on: date | None


@dataclass(frozen=True, slots=True)
class IntakeFacts:
    owner: str
    title: str


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the alert rules (`projections.alerts.request_alerts`, `next_check`) read of a
    request, by the names a `RequestState` gives them, read off its stored JSON (parsed
    with orjson: a tenth of a pydantic parse). Holds as of any instant at or after its
    newest event (`newest_at`); before, only the whole state can say."""

    request_id: str
    status: str
    clock_started_at: datetime
    intake: IntakeFacts
    last_decision: StandingDecision | None
    newest_at: datetime


NEWEST_KEY = "newest_event_at"  # a record's newest event's instant (`with_newest`)
_NEWEST_FIRST = b'{"' + NEWEST_KEY.encode() + b'":'


def newest_event_at(state: RequestState) -> datetime:
    """Its newest event's instant: its history is in fold order, the intake first and the
    rest by occurred_at."""
    history = state.history
    return max(history[0].occurred_at, history[-1].occurred_at)


def with_newest(state_json: bytes, state: RequestState) -> bytes:
    """A request state's JSON with its newest event's instant first, under `NEWEST_KEY`:
    with it, what the indexes read of a record is all before its history (`record_head`)."""
    # RFC 3339 as `isoformat` writes it, for the whole-minute offsets events carry (the
    # edge refuses others; orjson would drop an offset's seconds)
    return with_field(state_json, NEWEST_KEY, orjson.dumps(newest_event_at(state)))


def record_head(raw: bytes) -> dict[str, Any]:
    """A request's record parsed (`orjson.loads`) for what the indexes and the alert timer
    read of it: only what comes before its history (over half of its bytes, and most of
    its objects) when the record carries its newest event's instant (`with_newest`),
    else whole. The history is a state's last key, and nothing inside it reads as that
    key (a quote inside a string is escaped); JSON of another shape is parsed whole.
    orjson.JSONDecodeError if it is not JSON."""
    at = raw.rfind(HISTORY)
    if at > 0 and raw.startswith(_NEWEST_FIRST):
        with contextlib.suppress(orjson.JSONDecodeError):
            head = orjson.loads(raw[:at] + b"}")
            if type(head.get(NEWEST_KEY)) is str:
                return cast(dict[str, Any], head)
    return cast(dict[str, Any], orjson.loads(raw))


def newest_of(s: dict[str, Any]) -> datetime:
    """A request's newest event's instant, from its record (parsed): as the projector
    wrote it (`with_newest`), else read off its history (see `newest_event_at`)."""
    shipped = s.get(NEWEST_KEY)
    if type(shipped) is str:
        return datetime.fromisoformat(shipped)
    history = s["history"]
    return max(
        datetime.fromisoformat(history[0]["occurred_at"]),
        datetime.fromisoformat(history[-1]["occurred_at"]),
    )


def request_facts(s: dict[str, Any]) -> RequestFacts:
    """A request's facts from its state's JSON, parsed (`orjson.loads`); KeyError,
    TypeError or ValueError if it is not a request state's JSON."""
    newest = newest_of(s)
    last = None
    d = last_decision_of(s)
    if d is not None:
        revisit, review = d.get("revisit_on"), d.get("review_on")
        last = StandingDecision(
            event_id=d["event_id"], occurred_at=datetime.fromisoformat(d["occurred_at"]),
            outcome=d["outcome"],
            revisit_on=None if revisit is None else date.fromisoformat(revisit),
            review_on=None if review is None else date.fromisoformat(review),
        )  # fmt: skip
    intake = s["intake"]
    return RequestFacts(
        request_id=s["request_id"], status=s["status"],
        clock_started_at=datetime.fromisoformat(s["clock_started_at"]),
        intake=IntakeFacts(owner=intake["owner"], title=intake["title"]),
        last_decision=last, newest_at=newest,
    )  # fmt: skip
