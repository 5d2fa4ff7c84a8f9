"""`ledger demo`: the whole ledger on an embedded broker, fed a realistic history.

It starts the broker, the workers and the API, publishes ~1,000 generated events (six
months of partner operations) plus the hand-written `samples/sample.jsonl` (which
includes messages the validator must refuse) through the inbox, waits until every
message is judged and every accepted event is folded, then prints the views as of the
end of the history (LEDGER_CLOCK), and says how to go on.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections import Counter
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

import orjson
from rich.console import Console
from rich.panel import Panel
from rich.progress import Progress
from rich.table import Table

from events import from_mapping
from ledger.adapters.broker import free_port
from ledger.adapters.config import Settings
from ledger.adapters.publisher import Publisher
from ledger.adapters.reader import Collected, Record, collect
from ledger.adapters.topics import Topics
from ledger.entrypoints.history import generate
from ledger.entrypoints.query import QueryError, decode, fetch, render
from ledger.entrypoints.runner import running_ledger
from ledger.rules.policy import load_policy
from projections.alerts import alerts_of_log
from projections.views import text_instant_key

DEMO_CLOCK = datetime(2026, 6, 30, 9, 0, tzinfo=UTC)
DEMO_GRACE_S = 3.0


def sample_lines() -> list[bytes]:
    text = files("ledger").joinpath("samples/sample.jsonl").read_bytes()
    return [line for line in text.splitlines() if line.strip()]


def key_of(line: bytes) -> bytes | None:
    """The key a CRM would use; garbage lines have none."""
    try:
        data = orjson.loads(line)["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    key = data.get("request_id") or data.get("customer_id")
    return key.encode() if isinstance(key, str) else None


def demo_messages() -> list[tuple[bytes | None, bytes]]:
    lines = [orjson.dumps(e) for e in generate(until=DEMO_CLOCK)] + sample_lines()
    return [(key_of(x), x) for x in lines]


async def _judged(
    settings: Settings, bootstrap: str, expected: int, progress: Progress, timeout: float
) -> Collected:
    topics = Topics(settings.topic_prefix)
    task = progress.add_task("validating", total=expected)
    return await collect(
        settings,
        bootstrap,
        [topics.events, topics.rejected],
        until=lambda c: c.total() >= expected,
        timeout=timeout,
        on_progress=lambda c: progress.update(task, completed=c.total()),
    )


def _folded(settings: Settings, accepted: int, progress: Progress, timeout: float) -> bool:
    task = progress.add_task("projecting", total=accepted)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = decode(fetch(settings.api_url, "/health", {}, settings.api_token, False))
        except QueryError:
            health = {"events_folded": 0}
        progress.update(task, completed=health["events_folded"])
        if health["events_folded"] >= accepted:
            return True
        time.sleep(0.5)
    return False


def _alerted(settings: Settings, expected: int, progress: Progress, timeout: float) -> list[Any]:
    """Wait until the API lists the alerts the history raises (the timer judges the
    states as of LEDGER_CLOCK every LEDGER_ALERT_INTERVAL seconds)."""
    task = progress.add_task("alerting", total=expected)
    deadline = time.monotonic() + timeout
    alerts: list[Any] = []
    while time.monotonic() < deadline:
        alerts = decode(fetch(settings.api_url, "/alerts", {}, settings.api_token, False))
        progress.update(task, completed=len(alerts))
        if len(alerts) >= expected:
            break
        time.sleep(0.5)
    return alerts


def run_demo(settings: Settings, console: Console, timeout: float, keep: bool = False) -> int:
    port = free_port(settings.api_host)
    settings = settings.model_copy(
        update={
            "broker": None,
            "embedded_port": 0,  # a fresh, throwaway broker: the demo keeps nothing
            "clock": settings.clock or DEMO_CLOCK.isoformat(),
            "alert_interval": min(settings.alert_interval, 2.0),
            # the sample's events are published in order, keyed by subject: an event whose
            # predecessor is missing will not get one, so it is not held for long
            "reorder_grace_s": min(settings.reorder_grace_s, DEMO_GRACE_S),
            "api_port": port,
            "api_url": f"http://{settings.api_host}:{port}",
        }
    )
    messages = demo_messages()
    with running_ledger(settings, quiet=True) as running:
        console.print(
            f"embedded broker on {running.bootstrap}; workers and API starting "
            f"(logs in {settings.data_dir}); events with a missing predecessor are held "
            f"{settings.reorder_grace_s:g} s before they are refused"
        )
        started = time.monotonic()

        async def publish() -> None:
            async with Publisher(settings, running.bootstrap) as publisher:
                await publisher.send_raw(publisher.topics.inbox, messages)

        asyncio.run(publish())
        with Progress(console=console, transient=True) as progress:
            judged = asyncio.run(
                _judged(settings, running.bootstrap, len(messages), progress, timeout)
            )
            topics = Topics(settings.topic_prefix)
            accepted = {orjson.loads(r.value)["event_id"] for r in judged.records[topics.events]}
            rejected = judged.records[topics.rejected]
            folded = _folded(settings, len(accepted), progress, timeout)
            expected = _expected_alerts(settings, judged.records[topics.events])
            alerts = _alerted(settings, expected, progress, timeout) if folded else []
        elapsed = time.monotonic() - started
        console.print(
            f"{len(messages)} inbox messages: [green]{len(accepted)} accepted[/], "
            f"[red]{len(rejected)} rejected[/]; projections caught up in "
            f"{elapsed:.0f}s. Views as of {settings.clock}:\n"
        )
        if judged.total() < len(messages) or not folded:
            console.print("[red]the ledger did not catch up in time[/]; see the logs")
            return 1
        _rejections(console, rejected)
        for what, path, params in (
            ("pipeline", "/pipeline", {}),
            ("overdue", "/overdue", {}),
            ("abuse", "/customers/abuse", {"flagged": "true"}),
            ("metrics", "/metrics/decisions", {}),
        ):
            payload = decode(fetch(settings.api_url, path, params, settings.api_token, False))
            if isinstance(payload, list) and len(payload) > 12:
                console.print(f"[dim]{what}: the first 12 of {len(payload)}[/]")
                payload = payload[:12]
            render(console, what, payload)
            console.print()
        _message(console, settings, judged.records[topics.events])
        _partner_at_risk(console, settings)
        _report(console, settings)
        _alerts(console, alerts, expected)
        if not _sql(console, settings, len(accepted), len(alerts), timeout):
            return 1
        _next_steps(console, settings, keep)
        if keep:
            try:
                while running.worker.poll() is None and running.api.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                console.print("stopped")
    return 0


DEMO_SQL = """SELECT owner, kind, count(*) AS decisions,
       median(business_days_to_decide) AS median_days,
       round(avg(CASE WHEN within_target THEN 1 ELSE 0 END), 2) AS within_target
FROM decisions WHERE first_of_cycle
GROUP BY owner, kind ORDER BY median_days DESC, decisions DESC LIMIT 8"""


def _sql(console: Console, settings: Settings, events: int, alerts: int, timeout: float) -> bool:
    """Wait for the SQL projection to hold every accepted event and alert; show a query."""
    from ledger.adapters.sql import SqlError, duckdb_path, open_store

    store = open_store(settings.sql_url, settings.data_dir)
    try:
        deadline = time.monotonic() + timeout
        counts: list[Any] = []
        while time.monotonic() < deadline:
            try:
                _, counts = store.query(
                    "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM alerts)"
                )
                if tuple(counts[0]) == (events, alerts):
                    break
            except SqlError:
                pass  # not written yet
            time.sleep(0.5)
        else:
            console.print(f"[red]the SQL tables did not catch up[/] ({counts}); see sql.log")
            return False
        where = settings.sql_url or str(duckdb_path(settings.data_dir))
        console.print(
            f"SQL tables: {where} ({events} events, {alerts} alerts); "
            "median business days to decide by owner and kind:"
        )
        columns, rows = store.query(DEMO_SQL)
        table = Table(*columns)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)
        console.print(
            '[dim]ask your own: ledger sql "SELECT ..." (--csv, --json); '
            f"ledger export --parquet DIR; or open {where} in DuckDB (README: the tables)[/]\n"
        )
        return True
    finally:
        store.close()


def _message(console: Console, settings: Settings, accepted: list[Record]) -> None:
    """One drafted message: the latest conditional no's (or any decision's)."""
    decisions = [orjson.loads(r.value) for r in accepted]
    decisions = [e for e in decisions if e.get("type") == "decision"]
    if not decisions:
        return
    ranked = sorted(
        decisions, key=lambda e: (e["data"]["outcome"] == "conditional_no", e["occurred_at"])
    )
    request_id = ranked[-1]["data"]["request_id"]
    path = f"/requests/{urllib.parse.quote(request_id, safe='')}/message"
    text = fetch(settings.api_url, path, {"format": "text"}, settings.api_token, False).decode()
    console.print(
        Panel(text, title=f"the message to send for {request_id} (ledger draft {request_id})",
              title_align="left", expand=False)
    )  # fmt: skip
    console.print()


def _partner_at_risk(console: Console, settings: Settings) -> None:
    rows = decode(fetch(settings.api_url, "/partners", {"at_risk": "true"}, settings.api_token,
                        False))  # fmt: skip
    render(console, "partners at risk (serving a customer flagged for abusing partners)", rows)
    console.print()


def _report(console: Console, settings: Settings) -> None:
    """The last full month's Nos & Whys, written next to the logs."""
    now = settings.now()
    month = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    written = []
    for fmt in ("html", "md"):
        body = fetch(settings.api_url, "/reports/nos-and-whys", {"month": month, "format": fmt},
                     settings.api_token, False)  # fmt: skip
        path = settings.data_dir / f"nos-and-whys-{month}.{fmt}"
        path.write_bytes(body)
        written.append(str(path))
    console.print(f"the Nos & Whys for {month}: {written[0]} (open it in a browser), {written[1]}")
    console.print()


def _expected_alerts(settings: Settings, accepted: list[Record]) -> int:
    """How many alerts the accepted history raises, by the pure reference rules."""
    events = [from_mapping(orjson.loads(r.value)) for r in accepted]
    now = settings.now()
    policy = load_policy(settings.policy_file)
    raised = alerts_of_log(events, now, policy, settings.overdue_days, settings.overdue_unit)
    return len(raised)


def _alerts(console: Console, alerts: list[Any], expected: int) -> None:
    kinds = Counter(a["kind"] for a in alerts)
    console.print(
        f"alerts raised: {len(alerts)} of the {expected} this history calls for ("
        + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        + "); on ledger.alerts and, with LEDGER_ALERT_WEBHOOKS, POSTed to each webhook"
    )
    newest = sorted(alerts, key=lambda a: text_instant_key(a["raised_at"]), reverse=True)
    shown = sorted(newest, key=lambda a: a["kind"] != "customer_abuse_flagged")
    if len(shown) > 12:
        console.print(f"[dim]alerts: the first 12 of {len(shown)}[/]")
    render(console, "alerts", shown[:12])
    console.print()


def _rejections(console: Console, rejected: list[Record]) -> None:
    table = Table(
        "inbox p:offset",
        "code",
        "field",
        "reason",
        title=f"rejected, with reasons ({len(rejected)})",
        title_justify="left",
    )
    for record in rejected:
        doc = orjson.loads(record.value)
        for reason in doc["reasons"]:
            table.add_row(
                f"{doc['inbox']['partition']}:{doc['inbox']['offset']}",
                reason["code"],
                reason["field"] or "",
                reason["message"],
            )
    console.print(table)
    console.print()


def _next_steps(console: Console, settings: Settings, keep: bool) -> None:
    if keep:
        console.print(
            f"The ledger keeps running (Ctrl-C stops it). Try:\n"
            f"  LEDGER_API_URL={settings.api_url} .venv/bin/ledger query request "
            f"REQ-2001\n"
            f"  LEDGER_API_URL={settings.api_url} .venv/bin/ledger query customer "
            f"globex\n  LEDGER_API_URL={settings.api_url} .venv/bin/ledger draft "
            f"REQ-2001\n  curl '{settings.api_url}/overdue?format=csv'"
        )
    else:
        console.print(
            "To explore further: `.venv/bin/ledger demo --keep` leaves it running "
            "for `ledger query pipeline|overdue|abuse|metrics|alerts|request ID|customer ID` "
            "and the HTTP API (see README)."
        )
