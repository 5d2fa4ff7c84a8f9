"""The workers' tables hold each state as its changelog JSON and only the most recently
used as objects (issue 11: a worker's memory grows with JSON, not with objects)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from events import from_mapping
from ledger.adapters.config import Settings
from ledger.adapters.kafka import Outgoing
from ledger.entrypoints.history import generate
from projections import fold
from projections.metricsindex import part_from, part_of, policy_tag
from projections.state import RequestState, request_json
from workers.projector import EVER, Projector
from workers.runtime import make_table

UNTIL = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


def states() -> dict[bytes, RequestState]:
    folded = fold(from_mapping(e) for e in generate(requests=40, until=UNTIL, seed=3))
    return {k.encode(): s for k, s in folded.requests.items()}


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_a_table_keeps_json_and_a_bounded_cache_of_objects(store: str, tmp_path: Path) -> None:
    settings = Settings(store=store, data_dir=tmp_path)  # type: ignore[arg-type]
    table = make_table(
        settings, "t", RequestState.model_validate_json, lambda s: s.model_dump_json().encode(), 5
    )
    values = states()
    changes = table.changes(values)
    assert all(isinstance(c, Outgoing) for c in changes)
    table.apply(values, changes)
    assert len(table.cache) == 5  # the five used last, as objects
    if store == "memory":  # the rest as the JSON that went to the changelog
        assert table.data == {c.key: c.value for c in changes}
    for key, state in values.items():  # evicted ones are read back from their JSON
        assert table.get(key) == state
        assert len(table.cache) <= 5
    assert sorted(k for _, k in table.owned_keys()) == sorted(values)
    assert {k: v for _, k, v in table.owned()} == values
    for partition, key in table.owned_keys():
        assert table.partition(key) == partition
    table.drop(set(table.partitions))
    assert table.get(next(iter(values))) is None and not table.cache


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_the_alert_timer_finds_a_due_states_partition(store: str, tmp_path: Path) -> None:
    """The timer asked `partition_of`, which only the memory store fills: on RocksDB a
    due state stopped the timer with a KeyError."""
    settings = Settings(store=store, data_dir=tmp_path, clock=UNTIL.isoformat())  # type: ignore[arg-type]
    projector = Projector(settings, producer=None)  # type: ignore[arg-type]
    key, state = next(iter(states().items()))
    projector.requests.apply({key: state}, projector.requests.changes({key: state}))
    projector.due.put(False, key, EVER)
    assert asyncio.run(projector.check()) == 0  # its partition's log is not handled yet: waits
    waiting: Any = projector.due
    assert len(waiting) == 1


def test_the_timer_reads_no_state_whose_partition_is_not_ready(tmp_path: Path) -> None:
    """A partition taken over has every state due at once; while its log is replayed the
    timer must not parse them all (under the stream's lock) only to put them back."""
    settings = Settings(data_dir=tmp_path, clock=UNTIL.isoformat(), cache_states=1)
    projector = Projector(settings, producer=None)  # type: ignore[arg-type]
    values = states()
    projector.requests.apply(values, projector.requests.changes(values))
    loads = []
    parse = projector.requests.load
    projector.requests.load = lambda raw: loads.append(raw) or parse(raw)  # type: ignore[method-assign]
    for key in values:
        projector.due.put(False, key, EVER)
    assert asyncio.run(projector.check()) == 0
    assert loads == [] and len(projector.due) == len(values)  # all still due, none parsed


def test_the_projectors_request_records_carry_their_metrics_part(tmp_path: Path) -> None:
    """Each request record the projector writes holds the request's share of the decision
    metrics, taken under its policy, so the API sums the metrics without parsing states;
    the record still parses to the state."""
    projector = Projector(Settings(data_dir=tmp_path), producer=None)  # type: ignore[arg-type]
    values = states()
    changes = projector.requests.changes(values)
    assert len(changes) == len(values)
    for change in changes:
        state = values[change.key]
        assert RequestState.model_validate_json(change.value) == state
        part = part_from(orjson.loads(change.value), policy_tag(projector.policy))
        assert part == part_of(state, projector.policy)
    key, state = next(iter(values.items()))  # the record of a state spliced onto its stored JSON
    spliced = projector._record(state, request_json(state, None, []))  # noqa: SLF001
    assert RequestState.model_validate_json(spliced) == state
    assert part_from(orjson.loads(spliced), projector.part_tag) == part_of(state, projector.policy)


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_partitions_taken_over_are_swept_at_the_first_ready_tick(
    store: str, tmp_path: Path
) -> None:
    """An assignment lists no keys (on RocksDB at 1 M events that held the stream up for a
    second); the first tick that finds a taken-over partition ready checks every state of
    it once, and a partition not ready yet waits, its states unread."""
    settings = Settings(store=store, data_dir=tmp_path, clock=UNTIL.isoformat(), cache_states=1)  # type: ignore[arg-type]
    projector = Projector(settings, producer=None)  # type: ignore[arg-type]
    values = states()
    projector.requests.apply(values, projector.requests.changes(values))
    partitions = {projector.requests.partition(k) for k in values}
    projector.processor.assigned = set(partitions)
    asyncio.run(projector._taken_over(partitions))  # noqa: SLF001
    assert len(projector.due) == 0 and projector.sweep == partitions

    read: list[bytes] = []
    at_hand = projector._at_hand  # noqa: SLF001
    projector._at_hand = lambda c, key, now: read.append(key) or at_hand(c, key, now)  # type: ignore[method-assign]  # noqa: SLF001
    written: list[Any] = []

    async def write(alerts: Any, *_: Any) -> None:
        written.extend(alerts.alerts)

    projector._write = write  # type: ignore[method-assign]  # noqa: SLF001
    asyncio.run(projector.check())
    assert read == [] and projector.sweep == partitions  # none ready: nothing read

    first = min(partitions)
    projector.stream_time[first] = UNTIL  # its traffic is live: ready
    asyncio.run(projector.check())
    in_first = [k for k in values if projector.requests.partition(k) == first]
    assert in_first and sorted(read) == sorted(in_first)  # each state of it, once
    assert projector.sweep == partitions - {first}
    assert written  # overdue requests among them raised their alerts
    projector.processor.assigned -= partitions - {first}  # the rest went elsewhere
    asyncio.run(projector.check())
    assert projector.sweep == set()


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_the_timer_checks_due_requests_from_their_facts_without_parsing(
    store: str, tmp_path: Path
) -> None:
    """Due requests not kept as objects are checked from their facts, read off their
    stored JSON: no pydantic parse, and the alerts raised are those of their states."""
    from projections.alerts import request_alerts

    settings = Settings(store=store, data_dir=tmp_path, clock=UNTIL.isoformat(), cache_states=1)  # type: ignore[arg-type]
    projector = Projector(settings, producer=None)  # type: ignore[arg-type]
    values = states()
    projector.requests.apply(values, projector.requests.changes(values))
    loads: list[bytes] = []
    parse = projector.requests.load
    projector.requests.load = lambda raw: loads.append(raw) or parse(raw)  # type: ignore[method-assign]
    written: list[Any] = []

    async def write(alerts: Any, *_: Any) -> None:
        written.extend(alerts.alerts)

    projector._write = write  # type: ignore[method-assign]  # noqa: SLF001
    for key in values:
        projector.due.put(False, key, EVER)
        projector.stream_time[projector.requests.partition(key)] = UNTIL  # live
    asyncio.run(projector.check())
    assert loads == []
    policy, days, unit = projector.policy, projector.days, projector.unit
    want = {
        a["alert_id"] for s in values.values() for a in request_alerts(s, UNTIL, policy, days, unit)
    }
    assert want and {a["alert_id"] for a in written} == want
    assert len(projector.due) > 0  # and each rescheduled by its next deadline


def test_a_request_whose_part_cannot_be_taken_is_written_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the projector writes beside a state for the API is optional: a state whose
    part or assessment raised is written bare (the API then takes them from the state),
    and the projector goes on; it must not stop on it."""
    import workers.projector as projector_module

    def broken(*_: Any) -> bytes:
        raise ZeroDivisionError("a rule no state foresaw")

    monkeypatch.setattr(projector_module, "request_record", broken)
    projector = Projector(Settings(data_dir=tmp_path), producer=None)  # type: ignore[arg-type]
    values = states()
    changes = projector.requests.changes(values)
    for change in changes:
        assert change.value == values[change.key].model_dump_json().encode()
