"""Every bad request gets a JSON `{error, detail}` and a 4xx: never a 5xx, never plain text."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from ledger.adapters.config import Settings
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration

HUGE = "9" * 40
BAD_INSTANTS = [
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00+14:00",
    "2026-13-45T00:00:00Z",
    "yesterday",
    "2026-06-30T09:00:00",  # no offset
    HUGE,
    "",
]
ROUTES = [
    "/pipeline",
    "/overdue",
    "/customers/abuse",
    "/customers/globex",
    "/requests/REQ-1",
    "/metrics/decisions",
    "/alerts",
]
BAD_QUERIES = [
    ("/overdue", {"days": HUGE}),
    ("/overdue", {"days": "-" + HUGE}),
    ("/overdue", {"days": "-1"}),
    ("/overdue", {"days": "1e3"}),
    ("/overdue", {"days": "\x00"}),
    ("/pipeline", {"stage": "decided"}),
    ("/customers/abuse", {"flagged": "maybe"}),
    ("/pipeline", {"format": "xml"}),
    ("/requests/%00%ff", {}),
    ("/requests/" + "x" * 5000, {}),
    ("/customers/" + HUGE, {}),
    ("/no/such/route", {}),
] + [(route, {"as_of": bad}) for route in ROUTES for bad in BAD_INSTANTS]


async def _ask(settings: Settings, method: str, path: str, **kw: Any) -> tuple[int, Any, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, settings.api_url + path, **kw) as response,
    ):
        body = await response.read()
        return response.status, response.content_type, body.decode(errors="replace")


async def _api_up(settings: Settings) -> None:
    for _ in range(100):
        try:
            await _ask(settings, "GET", "/health")
            return
        except aiohttp.ClientError:
            await asyncio.sleep(0.2)
    raise AssertionError("the API never answered")


def _assert_json_4xx(status: int, content_type: str, text: str, what: str) -> dict[str, Any]:
    assert 400 <= status < 500, f"{what}: {status} {text[:200]}"
    assert content_type == "application/json", f"{what}: {content_type} {text[:200]}"
    body: dict[str, Any] = orjson.loads(text)
    assert set(body) == {"error", "detail"} and body["error"], f"{what}: {body}"
    return body


async def test_every_route_refuses_bad_values_with_json_4xx(
    settings: Settings, workers: Workers
) -> None:
    workers.start("ledger.api")
    await _api_up(settings)
    for path, params in BAD_QUERIES:
        status, ctype, text = await _ask(settings, "GET", path, params=params)
        _assert_json_4xx(status, ctype, text, f"{path} {params}")

    status, ctype, text = await _ask(settings, "DELETE", "/pipeline")
    assert _assert_json_4xx(status, ctype, text, "DELETE")["error"] == "method_not_allowed"
    for body in (b'[{"type":{}}]', b'{"type":[]}', b"[" * 10_000, b"\xff", b"", b"[]", b"{}"):
        status, ctype, text = await _ask(settings, "POST", "/events", data=body)
        assert status == 422, (body[:20], text)
        _assert_json_4xx(status, ctype, text, f"POST {body[:20]!r}")
    status, ctype, text = await _ask(settings, "POST", "/events", data=b" " * (2 * 1024 * 1024))
    detail = _assert_json_4xx(status, ctype, text, "POST 2 MiB")["detail"]
    assert status == 413 and "ledger publish" in detail


async def test_a_malformed_request_line_gets_a_json_400(
    settings: Settings, workers: Workers
) -> None:
    workers.start("ledger.api")
    await _api_up(settings)
    for raw in (b"GET /pipeline HTTP/9.9\r\n\r\n", b"\x16\x03\x01garbage\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.api_port)
        writer.write(raw)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        assert 400 <= status < 500, answer[:300]
        assert b"application/json" in head, answer[:300]
        assert orjson.loads(body)["error"], answer[:300]
