"""The SQL projection (issue 9) on a real broker, into DuckDB and a real PostgreSQL server.

The log is written to `ledger.events` (and the other inputs) as the validator and the
projector write them, so these tests are about the SQL writer alone: the same numbers
as the views, exactly once through SIGKILLs, and `ledger sql` / `ledger export`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from events import FieldError, from_mapping
from events.codec import subject_of
from ledger.adapters.broker import free_port
from ledger.adapters.config import Settings
from ledger.adapters.publisher import Publisher
from ledger.adapters.sql import DuckStore, PostgresStore, SqlStore, WriteRefused, duckdb_path
from ledger.entrypoints.cli import app
from ledger.entrypoints.history import generate
from ledger.entrypoints.runner import stop_process, worker_env
from ledger.rules.policy import Policy
from ledger.rules.rejections import Provenance, rejection_record
from projections import Folded, fold
from projections.alerts import alerts_of_log
from projections.tables import (
    CUSTOMERS,
    DECISIONS,
    ESCALATIONS,
    REQUESTS,
    Table,
    customer_row,
    request_rows,
)  # fmt: skip
from projections.views import abuse, metrics, overdue, pipeline
from tests.factories import decision, intake
from tests.postgres import PostgresMissing, fresh_database, throwaway_cluster
from workers.sql import SqlWriter, rebuild

AS_OF = datetime.fromisoformat("2026-06-30T09:00:00+00:00")
POLICY = Policy()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        with throwaway_cluster() as url:
            yield url
    except PostgresMissing as exc:
        pytest.fail(str(exc))  # never skipped: CI must not pass without PostgreSQL


@pytest.fixture(params=["duckdb", "postgres"])
def sql_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        db = fresh_database(url, f"ledger_{uuid.uuid4().hex[:8]}")
        return settings.model_copy(update={"sql_url": db})
    return settings


def store_of(settings: Settings) -> SqlStore:
    if settings.sql_url:
        return PostgresStore(settings.sql_url)
    return DuckStore(duckdb_path(settings.data_dir))


async def publish_log(settings: Settings, events: list[dict[str, Any]]) -> None:
    """Into ledger.events, keyed by subject, as the validator records them."""
    assert settings.broker is not None
    async with Publisher(settings, settings.broker) as publisher:
        messages = [(subject_of(from_mapping(e)).encode(), orjson.dumps(e)) for e in events]
        await publisher.send_raw(publisher.topics.events, messages)


async def publish_side_topics(settings: Settings, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Alerts, one delivery status twice (the later wins), one rejection."""
    assert settings.broker is not None
    raised = alerts_of_log([from_mapping(e) for e in events], AS_OF, POLICY, 10, "calendar")
    alerts = sorted(raised.values(), key=lambda a: a["alert_id"])
    first = alerts[0]["alert_id"]
    deliveries = [
        {"alert_id": first, "webhook": "http://hooks/a", "status": "failed", "attempts": 1,
         "http_status": 503, "error": "busy", "at": "2026-06-30T09:00:01+00:00"},
        {"alert_id": first, "webhook": "http://hooks/a", "status": "delivered", "attempts": 2,
         "http_status": 200, "error": None, "at": "2026-06-30T09:00:03+00:00"},
    ]  # fmt: skip
    refusal = rejection_record(
        b'{"type": "intake"',
        [FieldError("malformed_json", None, "not JSON: unexpected end")],
        Provenance(b"REQ-9", 2, 41),
        "2026-06-30T08:00:00+00:00",
    )
    async with Publisher(settings, settings.broker) as publisher:
        t = publisher.topics
        await publisher.send_raw(
            t.alerts, [(a["subject_id"].encode(), orjson.dumps(a)) for a in alerts]
        )
        await publisher.send_raw(
            t.deliveries, [(first.encode(), orjson.dumps(d)) for d in deliveries]
        )
        await publisher.send_raw(t.rejected, [(b"REQ-9", refusal)])
    return {"alerts": alerts, "first": first}


def _query(store: SqlStore, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return store.query(sql.replace("?", "%s") if store.dialect == "postgres" else sql, params)[1]


OVERDUE_SQL = """
SELECT request_id, 'decision_overdue', decision_due_at FROM requests
 WHERE status = 'open' AND decision_due_at < ?
UNION ALL SELECT request_id, 'hold_overdue', hold_due_at FROM requests WHERE hold_due_at < ?
UNION ALL SELECT request_id, 'revisit_overdue', NULL FROM requests
 WHERE status = 'decided' AND last_outcome IN ('conditional_no', 'hold') AND revisit_on < ?
UNION ALL SELECT request_id, 'pilot_review_overdue', NULL FROM requests
 WHERE status = 'decided' AND last_outcome = 'provisional_yes' AND review_on < ?
"""


def test_sql_answers_like_the_views(sql_settings: Settings) -> None:
    """Open pipeline, overdue list, flagged customers and decision metrics: from SQL and
    from the views (which the API serves) as of the same instant."""
    events = generate(requests=150, until=AS_OF, seed=11)
    settings = sql_settings
    assert settings.broker is not None
    asyncio.run(publish_log(settings, events))
    side = asyncio.run(publish_side_topics(settings, events))
    store = store_of(settings)
    try:
        read = asyncio.run(rebuild(settings, settings.broker, store))
        assert read == len(events) + len(side["alerts"]) + 3
        folded = fold(from_mapping(e) for e in events)

        want_pipeline = [
            (r["request_id"], r["kind"], r["owner"], r["stage"], r["opened_at"], r["age_days"],
             r["latest_adjusted_score"], r["recommendation"])
            for r in pipeline(folded.requests.values(), AS_OF, POLICY)
        ]  # fmt: skip
        got_pipeline = [
            (r[0], r[1], r[2], r[3], r[4].isoformat(), int(r[5]), r[6], r[7])
            for r in _query(
                store,
                "SELECT request_id, kind, owner, stage, clock_started_at,"
                " floor(extract(epoch FROM (?::timestamptz - clock_started_at)) / 86400),"
                " adjusted_score, recommendation FROM requests WHERE status = 'open'"
                " ORDER BY clock_started_at, request_id",
                AS_OF,
            )
        ]
        assert len(want_pipeline) > 20
        assert [(*r[:4], datetime.fromisoformat(r[4]), *r[5:]) for r in got_pipeline] == [
            (*r[:4], datetime.fromisoformat(r[4]), *r[5:]) for r in want_pipeline
        ]

        want_overdue = sorted(
            (r["request_id"], r["reason"]) for r in overdue(folded.requests.values(), AS_OF, POLICY)
        )
        day = AS_OF.date()
        got = _query(store, OVERDUE_SQL, AS_OF, AS_OF, day, day)
        assert len({reason for _, reason in want_overdue}) == 4  # every rule is exercised
        assert sorted((r[0], r[1]) for r in got) == want_overdue

        want_flagged = [
            (r["customer_id"], r["reasons"])
            for r in abuse(folded.customers.values(), AS_OF, POLICY, flagged=True)
        ]
        got_flagged = _query(
            store,
            "SELECT customer_id, reasons, severity_score FROM customers WHERE flagged"
            " ORDER BY severity_score DESC, customer_id",
        )
        assert want_flagged
        assert [(c, _json(r)) for c, r, _ in got_flagged] == want_flagged

        m = metrics(folded.requests.values(), AS_OF, POLICY)
        by_outcome = dict(_query(store, "SELECT outcome, count(*) FROM decisions GROUP BY 1"))
        assert by_outcome == m["by_outcome"]
        [(median, p90, within, overrides)] = _query(
            store,
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY business_days_to_decide)"
            "   FILTER (WHERE first_of_cycle),"
            " percentile_cont(0.9) WITHIN GROUP (ORDER BY business_days_to_decide)"
            "   FILTER (WHERE first_of_cycle),"
            " avg(CASE WHEN within_target THEN 1.0 ELSE 0.0 END) FILTER (WHERE first_of_cycle),"
            " avg(CASE WHEN overrode_recommendation THEN 1.0 ELSE 0.0 END)"
            "   FILTER (WHERE overrode_recommendation IS NOT NULL)"
            " FROM decisions",
        )
        assert median == m["median_business_days_to_decision"]
        assert round(float(p90), 6) == round(m["p90_business_days_to_decision"], 6)
        assert round(float(within), 4) == m["share_decided_within_target"]
        assert round(float(overrides), 4) == m["override_rate"]
        [(revisit_rate,)] = _query(
            store,
            "SELECT avg(CASE WHEN revisits > 0 THEN 1.0 ELSE 0.0 END) FROM requests"
            " WHERE decisions > 0",
        )
        assert round(float(revisit_rate), 4) == m["revisit_rate"]

        # the side topics: alerts once each, the latest delivery status, the rejection
        assert _query(store, "SELECT count(*), count(DISTINCT alert_id) FROM alerts") == [
            (len(side["alerts"]), len(side["alerts"]))
        ]
        assert _query(store, "SELECT status, attempts FROM alert_deliveries") == [("delivered", 2)]
        [(code, message, inbox_offset, original)] = _query(
            store, "SELECT code, message, inbox_offset, original_text FROM rejections"
        )
        assert (code, inbox_offset, original) == ("malformed_json", 41, '{"type": "intake"')
        assert "unexpected end" in message
    finally:
        store.close()


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


def expected_rows(folded: Folded) -> dict[str, list[tuple[Any, ...]]]:
    """What the tables must hold for a log: the folds' rows, by table."""
    requests, decisions = [], []
    for state in folded.requests.values():
        row, rows = request_rows(state, POLICY, 10, "calendar")
        requests.append(row)
        decisions.extend(rows)
    escalations = [
        (e.event_id, c.customer_id, e.partner_id, e.request_id, e.kind, e.severity, e.summary,
         e.occurred_at)
        for c in folded.customers.values() for e in c.escalations
    ]  # fmt: skip
    customers = [customer_row(c, POLICY) for c in folded.customers.values()]
    return {
        REQUESTS.name: requests,
        DECISIONS.name: decisions,
        ESCALATIONS.name: escalations,
        CUSTOMERS.name: customers,
    }


def normal(table: Table, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows comparable across stores: JSON parsed, sorted by key."""
    json_at = [i for i, c in enumerate(table.columns) if c.type == "json"]
    out = []
    for row in rows:
        cells = list(row)
        for i in json_at:
            cells[i] = _json(cells[i])
        out.append(tuple(cells))
    return sorted(out, key=lambda r: str(r[0]))


def start_writer(
    settings: Settings, log: Path, failpoint: str | None = None
) -> subprocess.Popen[bytes]:
    assert settings.broker is not None
    env = worker_env(settings, settings.broker)
    env["LEDGER_SQL_INTERVAL_S"] = "0.1"
    if settings.sql_url:
        env["LEDGER_SQL_URL"] = settings.sql_url
    env.pop("LEDGER_FAILPOINT", None)
    if failpoint:
        env["LEDGER_FAILPOINT"] = failpoint
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "workers.sql"], env=env, stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_sigkill_at_random_points_neither_loses_nor_doubles(
    sql_settings: Settings, tmp_path: Path
) -> None:
    """A real writer process, SIGKILLed inside a transaction and at random moments while
    the log grows, then left to finish: every table equals the fold of the log."""
    settings = sql_settings
    rng = random.Random(20261202)
    events = generate(requests=300, until=AS_OF, seed=23)
    chunks = [events[i : i + 150] for i in range(0, len(events), 150)]
    log = tmp_path / "sql-writer.log"
    asyncio.run(publish_log(settings, chunks[0]))
    writer = start_writer(settings, log, failpoint="sql-commit@2")
    store = store_of(settings)
    try:  # its first batch is in, so the next chunk is a second transaction
        for _ in range(120):
            if writer.poll() is not None or any(store.offsets().values()):
                break
            asyncio.run(asyncio.sleep(0.25))
    finally:
        store.close()
    asyncio.run(publish_log(settings, chunks[1]))
    assert writer.wait(60) == -signal.SIGKILL, log.read_text()  # died inside its 2nd commit
    kills = 0
    for chunk in chunks[2:]:
        writer = start_writer(settings, log)
        asyncio.run(publish_log(settings, chunk))
        if kills < 4:
            try:
                writer.wait(rng.uniform(0.8, 2.0))
            except subprocess.TimeoutExpired:
                os.kill(writer.pid, signal.SIGKILL)
                writer.wait()
                kills += 1
        else:
            stop_process(writer)
    assert kills == 4, log.read_text()
    writer = start_writer(settings, log)
    store = store_of(settings)
    try:
        _wait_caught_up(settings, store, writer, log)
        stop_process(writer)
        assert writer.returncode == 0, log.read_text()
        folded = fold(from_mapping(e) for e in events)
        ids = _query(store, "SELECT event_id FROM events")
        assert len(ids) == len(events)
        assert {i for (i,) in ids} == {e["event_id"] for e in events}
        for table_name, rows in expected_rows(folded).items():
            table = next(
                t for t in (REQUESTS, DECISIONS, ESCALATIONS, CUSTOMERS) if t.name == table_name
            )
            stored = _query(store, f"SELECT {', '.join(table.names)} FROM {table.name}")  # noqa: S608
            assert normal(table, stored) == normal(table, rows), table.name
    finally:
        store.close()


def _wait_caught_up(
    settings: Settings, store: SqlStore, writer: subprocess.Popen[bytes], log: Path
) -> None:
    async def caught_up() -> bool:
        assert settings.broker is not None
        probe = SqlWriter(settings, settings.broker, store)
        await probe.consumer.start()
        try:
            await probe.consumer._client.force_metadata_update()  # noqa: SLF001
            from aiokafka import TopicPartition

            tps = [
                TopicPartition(t, p)
                for t in probe.inputs
                for p in sorted(probe.consumer.partitions_for_topic(t) or ())
            ]
            ends = await probe.consumer.end_offsets(tps)
            stored = store.offsets()
            return all(stored.get((tp.topic, tp.partition), 0) >= end for tp, end in ends.items())
        finally:
            await probe.consumer.stop()

    for _ in range(120):
        assert writer.poll() is None, log.read_text()
        if asyncio.run(caught_up()):
            return
        asyncio.run(asyncio.sleep(0.5))
    raise AssertionError("the SQL writer did not catch up:\n" + log.read_text())


def test_ledger_sql_queries_exports_and_refuses_writes(settings: Settings, tmp_path: Path) -> None:
    import duckdb

    events = generate(requests=40, until=AS_OF, seed=3)
    assert settings.broker is not None
    asyncio.run(publish_log(settings, events))
    env = {
        "LEDGER_BROKER": settings.broker,
        "LEDGER_TOPIC_PREFIX": settings.topic_prefix,
        "LEDGER_DATA_DIR": str(settings.data_dir),
    }
    runner = CliRunner()
    built = runner.invoke(app, ["sql", "--rebuild", "SELECT count(*) AS n FROM events"], env=env)
    assert built.exit_code == 0, built.output
    assert f"rebuilt the SQL tables from {len(events)} records" in built.output

    as_json = runner.invoke(
        app,
        ["sql", "--json", "SELECT type, count(*) AS n FROM events GROUP BY 1 ORDER BY 1"],
        env=env,
    )
    assert as_json.exit_code == 0, as_json.output
    counts = {r["type"]: r["n"] for r in orjson.loads(as_json.stdout)}
    assert sum(counts.values()) == len(events) and counts["intake"] == 40

    as_csv = runner.invoke(
        app,
        ["sql", "--csv", "SELECT request_id, opened_at FROM requests ORDER BY 1 LIMIT 2"],
        env=env,
    )
    assert as_csv.exit_code == 0, as_csv.output
    lines = as_csv.stdout.splitlines()
    assert lines[0] == "request_id,opened_at" and len(lines) == 3
    assert datetime.fromisoformat(lines[1].split(",")[1]).tzinfo is not None

    writes = (
        "DROP TABLE events", "INSERT INTO events (event_id) VALUES ('x')",
        "SELECT 1; DELETE FROM requests", "UPDATE requests SET owner = 'me'",
    )  # fmt: skip
    for statement in writes:
        refused = runner.invoke(app, ["sql", statement], env=env)
        assert refused.exit_code == 2, (statement, refused.output)
        assert "read-only" in refused.output, refused.output
    with pytest.raises(WriteRefused, match="DROP"):
        DuckStore(duckdb_path(settings.data_dir)).query("drop table events")
    still = runner.invoke(app, ["sql", "--json", "SELECT count(*) AS n FROM events"], env=env)
    assert orjson.loads(still.stdout) == [{"n": len(events)}]  # nothing was dropped

    bad = runner.invoke(app, ["sql", "SELECT nope FROM requests"], env=env)
    assert bad.exit_code == 1 and "nope" in bad.output

    exported = runner.invoke(app, ["export", "--parquet", str(tmp_path / "parquet")], env=env)
    assert exported.exit_code == 0, exported.output
    files = sorted(p.name for p in (tmp_path / "parquet").glob("*.parquet"))
    assert files == sorted(f"{t}.parquet" for t in (
        "events", "requests", "decisions", "escalations", "customers", "alerts",
        "alert_deliveries", "rejections"))  # fmt: skip
    n = duckdb.sql(
        "SELECT count(*) FROM read_parquet($1)",
        params=[str(tmp_path / "parquet" / "requests.parquet")],
    )
    assert n.fetchall() == [(40,)]


def test_tables_of_another_log_are_rebuilt(settings: Settings) -> None:
    """A writer started against a different log (a fresh broker under the same data
    directory) does not resume from offsets that belong to the old one."""
    assert settings.broker is not None
    first = generate(requests=30, until=AS_OF, seed=1)
    asyncio.run(publish_log(settings, first))
    store = DuckStore(duckdb_path(settings.data_dir))
    asyncio.run(rebuild(settings, settings.broker, store))
    other = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "b."})
    second = generate(requests=10, until=AS_OF, seed=2)
    asyncio.run(publish_log(other, second))

    async def resume() -> None:
        assert other.broker is not None
        writer = await SqlWriter(other, other.broker, store).start()
        try:
            while not await writer.caught_up():
                await writer.step(500)
        finally:
            await writer.stop()

    asyncio.run(resume())
    ids = {i for (i,) in store.query("SELECT event_id FROM events")[1]}
    assert ids == {e["event_id"] for e in second}


def test_a_sql_store_that_is_away_does_not_stop_the_writer(
    settings: Settings, tmp_path: Path
) -> None:
    """PostgreSQL down: the writer waits and says so once, and never exits (a projection's
    store must not stop the ledger); it stops cleanly when asked."""
    away = settings.model_copy(
        update={"sql_url": f"postgresql://ledger@127.0.0.1:{free_port()}/postgres"}
    )
    log = tmp_path / "sql-writer.log"
    writer = start_writer(away, log)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            writer.wait(6)
        text = log.read_text()
        assert text.count("the SQL store is away") == 1, text
    finally:
        stop_process(writer)
    assert writer.returncode == 0, log.read_text()


def test_no_record_can_stop_the_writer(sql_settings: Settings) -> None:
    """Text with a NUL character (valid JSON, accepted by the validator), and side-topic
    records of any shape that another Kafka client wrote: each gets its row, typed as
    its table says, and the writer goes on."""
    settings = sql_settings
    assert settings.broker is not None
    events = [
        intake("R1", title="a\x00b", description="x\x00y", at="2026-06-01T09:00:00Z"),
        decision("R1", "decline", rationale="no\x00", at="2026-06-02T09:00:00Z"),
    ]
    asyncio.run(publish_log(settings, events))
    alerts = [
        b'{"alert_id": "A1", "kind": 5, "raised_at": "not a date", "details": {"n": 1}}',
        b"not json",
        b'{"alert_id": "A2", "subject_id": ["R1"], "raised_at": "2026-06-30T09:00:00"}',
    ]
    deliveries = [b'{"alert_id": "A1", "webhook": "http://h", "attempts": "two", "at": 7}']
    rejected = [b'{"original_bytes": "x", "inbox": {"partition": "p", "offset": 1e30}}', b"\xff"]

    async def side() -> None:
        assert settings.broker is not None
        async with Publisher(settings, settings.broker) as publisher:
            t = publisher.topics
            await publisher.send_raw(t.alerts, [(b"k", v) for v in alerts])
            await publisher.send_raw(t.deliveries, [(b"A1", v) for v in deliveries])
            await publisher.send_raw(t.rejected, [(b"k", v) for v in rejected])

    asyncio.run(side())
    store = store_of(settings)
    try:
        read = asyncio.run(rebuild(settings, settings.broker, store))
        assert read == len(events) + len(alerts) + len(deliveries) + len(rejected)
        nul = "\ufffd" if store.dialect == "postgres" else "\x00"  # PostgreSQL holds no NUL
        assert _query(store, "SELECT title FROM requests") == [(f"a{nul}b",)]
        assert _query(store, "SELECT rationale FROM decisions") == [(f"no{nul}",)]
        assert _query(store, "SELECT count(*) FROM events") == [(2,)]
        assert _query(
            store, "SELECT alert_id, kind, subject_id, raised_at FROM alerts ORDER BY 1"
        ) == [("A1", None, None, None), ("A2", None, None, None)]
        assert _query(store, "SELECT webhook, attempts, recorded_at FROM alert_deliveries") == [
            ("http://h", None, None)
        ]
        assert sorted(
            _query(store, "SELECT original_bytes, inbox_partition, inbox_offset FROM rejections")
        ) == [(1, None, None), (len(rejected[0]), None, None)]
    finally:
        store.close()
