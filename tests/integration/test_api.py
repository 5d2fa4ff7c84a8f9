"""The query API on a real broker, checked against the pure folds of the same history."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from events import from_mapping
from ledger.adapters.config import Settings
from ledger.adapters.publisher import Publisher
from ledger.entrypoints.history import generate
from ledger.rules.policy import Policy
from projections import Folded, fold
from projections.alerts import alerts_of_log
from projections.messages import draft
from projections.partners import partner_view, partners
from projections.report import nos_and_whys
from projections.views import abuse, customer_view, metrics, overdue, pipeline, request_view
from tests.factories import intake, score
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration
POLICY = Policy()
AS_OF = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


def known_history(requests: int = 80) -> list[dict[str, Any]]:
    return generate(requests=requests, until=AS_OF, seed=11)


async def publish(settings: Settings, events: list[dict[str, Any]]) -> None:
    assert settings.broker is not None
    async with Publisher(settings, settings.broker) as publisher:
        messages = [(subject(e).encode(), orjson.dumps(e)) for e in events]
        await publisher.send_raw(publisher.topics.inbox, messages)


async def get(settings: Settings, path: str, **kw: Any) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as http:
        response = await http.get(settings.api_url + path, **kw)
        await response.read()
        return response


async def get_json(settings: Settings, path: str) -> Any:
    response = await get(settings, path)
    assert response.status == 200, await response.text()
    return orjson.loads(await response.read())


async def wait_folded(
    settings: Settings, expected: int, workers: Workers, timeout: float = 120
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    folded = -1
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            response = await get(settings, "/health")  # 503 while the broker is away
            folded = orjson.loads(await response.read())["events_folded"]
        if folded >= expected:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"only {folded} of {expected} events folded\n{workers.logs()}")


def subject(event: dict[str, Any]) -> str:
    data = event["data"]
    return str(data["customer_id"] if event["type"] == "escalation" else data["request_id"])


async def walk(settings: Settings, path: str, limit: int) -> list[Any]:
    """Every row of a list, page by page; each page says the same total."""
    sep = "&" if "?" in path else "?"
    page = await get_json(settings, f"{path}{sep}limit={limit}")
    items, total = list(page["items"]), page["total"]
    while page["next_cursor"] is not None:
        assert len(page["items"]) == limit
        page = await get_json(settings, f"{path}{sep}cursor={page['next_cursor']}")
        assert page["total"] == total
        items.extend(page["items"])
    assert len(items) == total
    return items


def rows_of_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def as_csv_cells(rows: list[dict[str, Any]], columns: list[str]) -> list[dict[str, str]]:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, dict | list):
            return orjson.dumps(v).decode()
        return str(v)

    return [{c: cell(r.get(c)) for c in columns} for r in rows]


def expected_lists(folded: Folded) -> dict[str, Any]:
    requests, customers = folded.requests.values(), folded.customers.values()
    return {
        "/pipeline": pipeline(requests, AS_OF, POLICY),
        "/overdue": overdue(requests, AS_OF, POLICY),
        "/customers/abuse": abuse(customers, AS_OF, POLICY),
        "/metrics/decisions": metrics(requests, AS_OF, POLICY),
    }


def jsonish(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


async def assert_lists_match(settings: Settings, folded: Folded) -> None:
    for path, expected in expected_lists(folded).items():
        assert await get_json(settings, path) == jsonish(expected), path


async def test_every_route_answers_the_fold_of_the_log(
    settings: Settings, workers: Workers
) -> None:
    events = known_history()
    folded = fold(from_mapping(e) for e in events)
    workers.start()
    workers.start("ledger.api")
    await publish(settings, events)
    await wait_folded(settings, len(events), workers)

    await assert_lists_match(settings, folded)
    some_request = sorted(folded.requests)[3]
    assert await get_json(settings, f"/requests/{some_request}") == jsonish(
        request_view(folded.requests[some_request], AS_OF, POLICY)
    )
    assert await get_json(settings, "/customers/globex") == jsonish(
        customer_view(folded.customers["globex"], AS_OF, POLICY)
    )

    # the message to send with each decision, as drafted from the fold
    decided = sorted(r for r, state in folded.requests.items() if state.last_decision)
    undecided = sorted(r for r, state in folded.requests.items() if not state.last_decision)
    assert decided and undecided
    for request_id in decided[:3]:
        expected = draft(folded.requests[request_id])
        assert expected is not None
        path = f"/requests/{request_id}/message"
        assert await get_json(settings, path) == expected.as_dict()
        as_text = await get(settings, path, headers={"Accept": "text/plain"})
        assert as_text.headers["Content-Type"].startswith("text/plain")
        assert await as_text.text() == expected.as_text()
    no_decision = await get(settings, f"/requests/{undecided[0]}/message?format=text")
    assert no_decision.status == 404
    assert orjson.loads(await no_decision.read())["error"] == "no_decision"

    # the monthly Nos & Whys, as JSON, as a page, and written by `ledger report`
    report = await get_json(settings, "/reports/nos-and-whys?month=2026-03&format=json")
    assert report == jsonish(
        nos_and_whys(folded.requests.values(), folded.customers.values(), "2026-03", POLICY)
    )
    page = await get(settings, "/reports/nos-and-whys?month=2026-03")
    assert page.headers["Content-Type"].startswith("text/html")
    assert (await page.text()).count("<svg") == 2
    for bad in ("month=2026-13", "month=march", "", "month=2026-03&format=pdf"):
        refused = await get(settings, f"/reports/nos-and-whys?{bad}")
        assert refused.status == 422, bad
    written = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).with_name("ledger")), "report", "--month", "2026-03",
         "--out", str(settings.data_dir / "reports")],
        env={**os.environ, "LEDGER_API_URL": settings.api_url},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert written.returncode == 0, written.stdout + written.stderr
    html_file = settings.data_dir / "reports" / "nos-and-whys-2026-03.html"
    assert html_file.read_text() == await page.text()
    md_file = settings.data_dir / "reports" / "nos-and-whys-2026-03.md"
    assert md_file.read_text().startswith("# Nos & Whys — 2026-03")

    # the partner's side
    requests, customers = folded.requests.values(), folded.customers.values()
    everyone = partners(requests, customers, AS_OF, POLICY)
    at_risk = partners(requests, customers, AS_OF, POLICY, at_risk=True)
    assert at_risk, "the history has partners serving a flagged customer"
    assert await get_json(settings, "/partners") == jsonish(everyone)
    assert await get_json(settings, "/partners?at_risk=true") == jsonish(at_risk)
    for row in (at_risk[0], everyone[-1]):
        pid = row["partner_id"]
        assert await get_json(settings, f"/partners/{pid}") == jsonish(
            partner_view(pid, requests, customers, AS_OF, POLICY)
        )
    assert (await get(settings, "/partners/nobody")).status == 404

    # filters and as_of
    ana = pipeline(folded.requests.values(), AS_OF, POLICY, owner="a.lindqvist", stage="scored")
    assert await get_json(settings, "/pipeline?owner=a.lindqvist&stage=scored") == jsonish(ana)
    past = datetime.fromisoformat("2026-03-01T00:00:00+00:00")
    assert await get_json(settings, "/overdue?as_of=2026-03-01T00:00:00%2B00:00&days=5") == (
        jsonish(overdue(folded.requests.values(), past, POLICY, days=5))
    )
    flagged = [r for r in abuse(folded.customers.values(), AS_OF, POLICY) if r["flagged"]]
    assert flagged and await get_json(settings, "/customers/abuse?flagged=true") == jsonish(flagged)

    # pages: walked with limit and cursor, they are the whole list, as of the first page
    for path, whole in (
        ("/pipeline?owner=a.lindqvist", pipeline(requests, AS_OF, POLICY, owner="a.lindqvist")),
        ("/overdue?days=5", overdue(requests, AS_OF, POLICY, days=5)),
        ("/overdue", overdue(requests, AS_OF, POLICY)),  # from the index, read lazily
        ("/pipeline", pipeline(requests, AS_OF, POLICY)),  # likewise
        ("/customers/abuse", abuse(customers, AS_OF, POLICY)),
        ("/partners", everyone),
    ):
        assert len(whole) > 3, path
        assert await walk(settings, path, 3) == jsonish(whole), path
    alerts_whole = await get_json(settings, "/alerts")
    assert await walk(settings, "/alerts", 50) == alerts_whole
    first = await get_json(settings, "/pipeline?limit=3")
    assert first["total"] == len(pipeline(requests, AS_OF, POLICY))
    assert first["as_of"] == AS_OF.isoformat() and len(first["items"]) == 3
    csv_page = await get(settings, f"/pipeline?format=csv&limit=3&cursor={first['next_cursor']}")
    assert csv_page.headers["X-Total-Count"] == str(first["total"])
    assert [r["request_id"] for r in rows_of_csv(await csv_page.text())] == [
        r["request_id"] for r in pipeline(requests, AS_OF, POLICY)[3:6]
    ]
    crafted = base64.urlsafe_b64encode(
        orjson.dumps({"as_of": AS_OF.isoformat(), "after": [1, 2], "query": "/pipeline?",
                      "limit": 5})
    ).decode()  # fmt: skip
    for bad in (
        "/pipeline?limit=0", "/pipeline?limit=x", f"/pipeline?limit={10**6}",
        "/pipeline?cursor=garbage", f"/overdue?cursor={first['next_cursor']}",
        f"/pipeline?owner=m.okafor&cursor={first['next_cursor']}",
        f"/pipeline?as_of=2026-03-01T00:00:00%2B00:00&cursor={first['next_cursor']}",
        f"/pipeline?cursor={crafted}",
    ):  # fmt: skip
        refused = await get(settings, bad)
        assert refused.status == 422, bad
        assert set(orjson.loads(await refused.read())["detail"]) & {"limit", "cursor", "as_of"}

    # CSV, by query parameter and by Accept header
    csv_pipeline = await get(settings, "/pipeline?format=csv")
    assert csv_pipeline.headers["Content-Type"].startswith("text/csv")
    columns = [
        "request_id",
        "kind",
        "title",
        "owner",
        "stage",
        "opened_at",
        "age_days",
        "business_age_days",
        "latest_adjusted_score",
        "recommendation",
    ]
    expected_pipeline = pipeline(folded.requests.values(), AS_OF, POLICY)
    assert rows_of_csv(await csv_pipeline.text()) == as_csv_cells(expected_pipeline, columns)
    csv_abuse = await get(settings, "/customers/abuse", headers={"Accept": "text/csv"})
    abuse_rows = rows_of_csv(await csv_abuse.text())
    assert [r["customer_id"] for r in abuse_rows] == [
        r["customer_id"] for r in abuse(folded.customers.values(), AS_OF, POLICY)
    ]
    assert (
        orjson.loads(abuse_rows[0]["reasons"])
        == abuse(folded.customers.values(), AS_OF, POLICY)[0]["reasons"]
    )
    csv_overdue = await get(settings, "/overdue?format=csv")
    assert len(rows_of_csv(await csv_overdue.text())) == len(
        overdue(folded.requests.values(), AS_OF, POLICY)
    )

    # errors
    missing = await get(settings, "/requests/NOPE-1")
    assert missing.status == 404
    assert orjson.loads(await missing.read())["error"] == "not_found"
    assert (await get(settings, "/customers/nobody")).status == 404
    for bad in (
        "/pipeline?as_of=yesterday",
        "/pipeline?as_of=2026-03-01T00:00:00",
        "/pipeline?stage=decided",
        "/overdue?days=ten",
        "/customers/abuse?flagged=1",
        "/pipeline?format=xml",
    ):
        response = await get(settings, bad)
        assert response.status == 422, bad
        assert orjson.loads(await response.read())["error"] == "invalid_parameter"

    health = await get_json(settings, "/health")
    assert health["ready"] and health["broker_reachable"]
    assert health["events_folded"] == len(events)
    # alerts raised so far (the timer's 60 s tick may not have come): each one expected
    reference = alerts_of_log((from_mapping(e) for e in events), AS_OF, POLICY, 10, "calendar")
    listed = await get_json(settings, "/alerts")
    assert listed and {a["alert_id"] for a in listed} <= set(reference)


async def test_post_events_validates_all_or_nothing(settings: Settings, workers: Workers) -> None:
    workers.start()
    workers.start("ledger.api")
    await wait_folded(settings, 0, workers)
    bad = score("P1", name="bad")
    bad["data"]["fit"] = 9
    async with aiohttp.ClientSession() as http:
        refused = await http.post(
            settings.api_url + "/events", data=orjson.dumps([intake("P1"), bad])
        )
        assert refused.status == 422
        body = orjson.loads(await refused.read())
        assert body["detail"] == [
            {"item": 2, "code": "schema", "field": "data.fit", "message": "must be between 0 and 5"}
        ]
        accepted = await http.post(
            settings.api_url + "/events", data=orjson.dumps([intake("P2"), score("P2")])
        )
        assert accepted.status == 202
        ids = orjson.loads(await accepted.read())["accepted"]
        assert ids == [intake("P2")["event_id"], score("P2")["event_id"]]
    await wait_folded(settings, 2, workers)
    view = await get_json(settings, "/requests/P2")
    assert [t["type"] for t in view["timeline"]] == ["intake", "score"]
    assert (await get(settings, "/requests/P1")).status == 404  # nothing half-written


async def test_bearer_token_guards_every_route_but_health(
    settings: Settings, workers: Workers
) -> None:
    workers.settings = settings.model_copy(update={"api_token": "s3cret"})
    workers.start("ledger.api")
    await wait_folded(settings, 0, workers)
    assert (await get(settings, "/health")).status == 200
    for path in ("/pipeline", "/overdue", "/customers/abuse", "/metrics/decisions", "/alerts"):
        assert (await get(settings, path)).status == 401
        wrong = await get(settings, path, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        right = await get(settings, path, headers={"Authorization": "Bearer s3cret"})
        assert right.status == 200, path


async def test_sigkill_halfway_converges_to_the_fold(settings: Settings, workers: Workers) -> None:
    events = known_history(200)
    folded = fold(from_mapping(e) for e in events)
    half = len(events) // 2
    first = workers.start()
    workers.start("ledger.api")
    await publish(settings, events[:half])
    await wait_folded(settings, half // 3, workers)
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait, 30)
    await publish(settings, events[half:])
    workers.start()
    await wait_folded(settings, len(events), workers, timeout=180)
    await asyncio.sleep(2)  # anything counted twice would show up by now
    health = await get_json(settings, "/health")
    assert health["events_folded"] == len(events)
    await assert_lists_match(settings, folded)


async def test_two_workers_give_the_same_answers(settings: Settings, workers: Workers) -> None:
    events = known_history(150)
    folded = fold(from_mapping(e) for e in events)
    workers.start()
    workers.start()
    workers.start("ledger.api")
    await publish(settings, events)
    await wait_folded(settings, len(events), workers, timeout=180)
    await assert_lists_match(settings, folded)
    # once the stream is idle, every stage has committed what it handled (a batch that
    # wrote leaves its offsets to the next one's fence, or to the idle loop): no backlog
    deadline = asyncio.get_running_loop().time() + 30
    stream: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        stream = (await get_json(settings, "/health"))["stream"]
        if stream["status"] == "idle":
            break
        await asyncio.sleep(0.5)
    assert stream["status"] == "idle", stream
    assert set(stream["backlog"].values()) == {0}, stream


async def test_rocksdb_store_recovers_after_a_restart(settings: Settings, workers: Workers) -> None:
    workers.settings = settings.model_copy(update={"store": "rocksdb"})
    events = known_history(100)
    folded = fold(from_mapping(e) for e in events)
    half = len(events) // 2
    first = workers.start()
    workers.start("ledger.api")
    await publish(settings, events[:half])
    await wait_folded(settings, half, workers)
    first.send_signal(signal.SIGTERM)
    await asyncio.to_thread(first.wait, 60)
    await publish(settings, events[half:])
    workers.start()
    await wait_folded(settings, len(events), workers)
    await assert_lists_match(settings, folded)
    assert list((settings.data_dir / "worker").rglob("*.sst")) or list(
        (settings.data_dir / "worker").rglob("CURRENT")
    ), "no RocksDB files were written"
