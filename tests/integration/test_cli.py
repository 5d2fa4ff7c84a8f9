"""`ledger publish` and `ledger schema` end to end (a real broker for publish)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from events import AnyEvent
from ledger.adapters.config import Settings
from ledger.adapters.reader import collect
from ledger.adapters.sql import DuckStore
from ledger.adapters.topics import Topics
from ledger.entrypoints.cli import app
from ledger.entrypoints.demo import DEMO_CLOCK, demo_messages
from ledger.rules.intake import parse_lines
from ledger.rules.lifecycle import Fact, SubjectState, admit
from ledger.rules.policy import Policy
from projections.alerts import alerts_of_log
from tests.factories import intake, raw, score

pytestmark = pytest.mark.integration


def test_publish_reports_bad_lines_and_publishes_the_good_ones(
    settings: Settings, tmp_path: Path
) -> None:
    bad = score("R1", name="bad")
    bad["data"]["readiness"] = 9
    lines = [raw(intake("R1")), b"{oops", raw(bad), b"", raw(score("R1"))]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines))
    env = {"LEDGER_BROKER": settings.broker, "LEDGER_TOPIC_PREFIX": settings.topic_prefix}
    result = CliRunner().invoke(app, ["publish", str(path)], env=env)

    assert result.exit_code == 1
    assert "line 2: not UTF-8 JSON" in result.output
    assert "line 3: data.readiness: must be between 0 and 5" in result.output
    assert "published 2 event(s); 2 bad line(s)" in result.output
    assert settings.broker is not None
    inbox = Topics(settings.topic_prefix).inbox
    got = asyncio.run(collect(settings, settings.broker, [inbox], lambda c: False, 3.0))
    records = got.records[inbox]
    assert sorted(r.value for r in records) == sorted([lines[0], lines[4]])
    assert {r.key for r in records} == {b"R1"}  # keyed by request_id


def test_publish_from_stdin_all_good_exits_zero(settings: Settings) -> None:
    env = {"LEDGER_BROKER": settings.broker, "LEDGER_TOPIC_PREFIX": settings.topic_prefix}
    result = CliRunner().invoke(app, ["publish", "-"], input=raw(intake("R7")), env=env)
    assert result.exit_code == 0, result.output
    assert "published 1 event(s); 0 bad line(s)" in result.output


def test_publish_without_broker_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["publish", "-"], input=b"", env={"LEDGER_BROKER": ""})
    assert result.exit_code == 2
    assert "LEDGER_BROKER is not set" in result.output


def test_schema_prints_json_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = orjson.loads(result.stdout)
    assert set(schema["discriminator"]["mapping"]) == {
        "intake",
        "score",
        "decision",
        "revisit",
        "escalation",
    }


def accepted_in_order(lines: list[bytes]) -> list[AnyEvent]:
    """The events the validator accepts from `lines`, by the pure rules."""
    states: dict[tuple[bool, str], SubjectState] = {}
    accepted = []
    for event, _ in parse_lines(lines).good:
        fact = Fact.of(event)
        key = (event.type == "escalation", fact.subject)
        verdict = admit(states.get(key, SubjectState()), fact)
        if isinstance(verdict, SubjectState):
            states[key] = verdict
            accepted.append(event)
    return accepted


def test_demo_shows_the_four_views_and_the_alerts_its_history_raises(tmp_path: Path) -> None:
    events = accepted_in_order([line for _, line in demo_messages()])
    expected = alerts_of_log(events, DEMO_CLOCK, Policy(), 10, "calendar")
    flagged = {a["subject_id"] for a in expected.values() if a["kind"] == "customer_abuse_flagged"}
    assert flagged

    env = {**os.environ, "LEDGER_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    env.pop("LEDGER_BROKER", None)
    done = subprocess.run(  # noqa: S603 - our own entry point
        [str(Path(sys.executable).parent / "ledger"), "demo"],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for title in ("rejected, with reasons", "pipeline (", "overdue (", "abuse (", "metrics"):
        assert title in out
    assert "the message to send for REQ-" in out and "Subject: " in out
    assert "partners at risk" in out
    assert "the Nos & Whys for 2026-05" in out
    assert (tmp_path / "nos-and-whys-2026-05.html").read_text().count("<svg") == 2
    assert f"alerts raised: {len(expected)} of the {len(expected)}" in out
    for customer in flagged:
        assert customer in out
    # the SQL tables it leaves: every accepted event once, every alert, a file to open
    assert f"SQL tables: {tmp_path / 'ledger.duckdb'} ({len(events)} events" in out
    store = DuckStore(tmp_path / "ledger.duckdb")
    [(rows, distinct)] = store.query("SELECT count(*), count(DISTINCT event_id) FROM events")[1]
    assert rows == distinct == len(events)
    assert store.query("SELECT count(*) FROM alerts")[1] == [(len(expected),)]
