"""The query API (CONTRACT section 5), on aiohttp, over a `ReadModel`.

It runs in its own process (`python -m ledger.api`, started by `ledger up`): it folds
nothing itself, it reads the projector's changelogs, so any number of API processes
give the same answers whichever workers own which partitions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import hmac
import io
import signal
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from itertools import dropwhile, islice
from typing import Any, Protocol

import orjson
from aiohttp import web, web_protocol
from aiohttp.typedefs import Middleware
from aiokafka.errors import KafkaError

from ledger.adapters.config import Settings
from ledger.adapters.process import API_SWITCH_INTERVAL_S, configure_process
from ledger.adapters.publisher import Publisher
from ledger.api.openapi import (
    BOOLEANS,
    EARLIEST,
    FORMATS,
    LATEST,
    MAX_BODY_BYTES,
    MAX_DAYS,
    MAX_LIMIT,
    STAGES,
    document,
)
from ledger.api.readmodel import ReadModel
from ledger.api.stream import StreamWatch
from ledger.rules.intake import parse_body
from ledger.rules.policy import Policy, load_policy
from projections import messages, report_pages, views
from projections import partners as partner_views
from projections import report as report_figures
from projections.listindex import ListIndex, never_due, not_open
from projections.state import request_as_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
READ_MODEL: web.AppKey[ReadModel] = web.AppKey("read_model", ReadModel)
STREAM: web.AppKey[StreamWatch] = web.AppKey("stream", StreamWatch)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
MESSAGE_FORMATS = ("json", "text")
REPORT_FORMATS = ("html", "md", "json")
RETRY_AFTER_S = 5  # what a 503 asks a client to wait before sending again
PUBLISHER: web.AppKey[Publisher] = web.AppKey("publisher", Publisher)


class Problem(web.HTTPException):
    """An error answered as JSON: {"error": ..., "detail": ...}."""

    def __init__(
        self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        self.status_code = status
        body = orjson.dumps({"error": error, "detail": detail})
        super().__init__(body=body, content_type="application/json", headers=headers)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json",
        headers=headers,
    )  # fmt: skip


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return "" if value is None else value


def to_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as CSV; nested values are JSON in their cell, None is empty."""
    columns = columns or (list(rows[0]) if rows else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in FORMATS:
            raise Problem(422, "invalid_parameter", {"format": "must be json or csv"})
        return fmt == "csv"
    return "text/csv" in request.headers.get("Accept", "")


# A whole list is built and written a little at a time, other requests answered between:
# an answer takes several turns of the event loop, each waiting for every list's step.
# At 500 rows a step, /health took up to 33-70 ms while ten whole pipelines (22 k rows
# each) were asked for at once; at 100, up to 10-14 ms, the lists as fast (bench.queries)
JSON_CHUNK = 100  # rows of a whole JSON list encoded between turns of the event loop
ROW_SLICE = 100  # rows of a whole list built between turns of the event loop
CSV_CHUNK = 200  # rows per write (2,000 pipeline rows of CSV held the loop ~9.5 ms)
Key = Callable[[dict[str, Any]], tuple[Any, ...]]
PAGING = ("limit", "cursor")


def _query_of(request: web.Request) -> str:
    """What a cursor is bound to: the route and its filters (not the page or format)."""
    kept = sorted((k, v) for k, v in request.query.items() if k not in (*PAGING, "format", "as_of"))
    return request.path + "?" + "&".join(f"{k}={v}" for k, v in kept)


def _cursor(request: web.Request) -> dict[str, Any] | None:
    """The decoded `cursor` parameter (None: a first page or no paging)."""
    raw = request.query.get("cursor")
    if raw is None:
        return None
    not_ours = Problem(422, "invalid_parameter", {"cursor": "not a cursor this API gave"})
    try:
        cursor = orjson.loads(base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise not_ours from None
    if not (
        isinstance(cursor, dict)
        and isinstance(cursor.get("after"), list)
        and isinstance(cursor.get("as_of"), str)
        and isinstance(cursor.get("limit"), int)
        and 1 <= cursor["limit"] <= MAX_LIMIT
    ):
        raise not_ours
    if cursor.get("query") != _query_of(request):
        raise Problem(
            422, "invalid_parameter",
            {"cursor": "belongs to another list or other filters: start again without it"},
        )  # fmt: skip
    return cursor


def _limit(request: web.Request, cursor: dict[str, Any] | None) -> int | None:
    raw = request.query.get("limit")
    if raw is None:
        return int(cursor["limit"]) if cursor is not None else None
    try:
        limit = int(raw)
    except ValueError:
        raise Problem(422, "invalid_parameter", {"limit": "must be an integer"}) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Problem(422, "invalid_parameter", {"limit": f"must be between 1 and {MAX_LIMIT}"})
    return limit


class Rows(Protocol):
    """A list's rows in order, and how many: a list, or one made as it is read."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[dict[str, Any]]: ...


async def _listing(
    request: web.Request,
    rows: Rows,
    columns: list[str],
    key: Key,
    as_of: datetime,
    newest_first: bool = False,
    build: Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]] | None = None,
    gate: asyncio.Semaphore | None = None,
) -> web.StreamResponse:
    """A list, whole (a JSON array, as before) or one page of it: with `limit` (and then
    `cursor`), `{items, total, next_cursor, as_of}`. Rows are in `key` order (descending
    with `newest_first`); a cursor holds the last row's key and the instant of the first
    page, so the pages of one walk are of the same list as of the same instant. With
    `build`, `rows` hold only what `key` reads, and `build` makes the rows of the page
    (or of the whole list) from them: a page costs what it holds."""
    cursor = _cursor(request)
    limit = _limit(request, cursor)
    headers: dict[str, str] = {}
    page: Iterable[dict[str, Any]] = rows
    paged: dict[str, Any] | None = None
    if limit is not None:
        remaining: Iterator[dict[str, Any]] = iter(rows)
        if cursor is not None:
            after = _tuple(cursor["after"])

            def before_or_at(row: dict[str, Any]) -> bool:
                k = key(row)
                if not _same_shape(k, after):
                    raise TypeError("a cursor of another list")
                return (k >= after) if newest_first else (k <= after)

            remaining = dropwhile(before_or_at, remaining)
        try:
            taken = list(islice(remaining, limit + 1))  # one more: is there a next page?
        except TypeError:  # a key of another shape: not from this list
            raise Problem(
                422, "invalid_parameter", {"cursor": "not a cursor of this list"}
            ) from None
        page = taken[:limit]
        next_cursor = None
        if len(taken) > limit:
            token = {"as_of": as_of.isoformat(), "after": list(key(taken[limit - 1])),
                     "query": _query_of(request), "limit": limit}  # fmt: skip
            next_cursor = base64.urlsafe_b64encode(orjson.dumps(token)).decode().rstrip("=")
            headers["X-Next-Cursor"] = next_cursor
        headers["X-Total-Count"] = str(len(rows))
        paged = {"items": page, "total": len(rows), "next_cursor": next_cursor,
                 "as_of": as_of.isoformat()}  # fmt: skip
    if build is not None and paged is None:  # the whole list: built a slice at a time,
        built: list[dict[str, Any]] = []  # `gate`'s few lists at once
        async with gate or contextlib.nullcontext():
            keys = iter(page)
            while chunk := list(islice(keys, ROW_SLICE)):
                built += await build(chunk)
                await asyncio.sleep(0)
        page = built
    elif build is not None:
        page = await build(list(page))
        if paged is not None:
            paged["items"] = page
    page = page if isinstance(page, list) else list(page)
    if _wants_csv(request):
        return await _stream_csv(request, page, columns, headers)
    if paged is None and len(page) > JSON_CHUNK:
        return await _stream_json(request, page, headers)
    return _json(paged if paged is not None else page, headers=headers)


def pipeline_rows(
    model: ReadModel, ids: list[str], as_of: datetime, policy: Policy
) -> list[dict[str, Any]]:
    """The pipeline's rows of many requests (ids in the pipeline's order): read off the
    index's entries where the projector wrote the request's assessment into its record
    (`Entry.pipeline_row`: no state parsed), else from the states, `SMALL_PAGE` at a
    time, each read without being kept (`ReadModel.peek_request`: safe off the event
    loop): ten whole lists at once hold ten slices of states, not ten copies of every
    open request, and the states kept parsed for single lookups stay."""
    index = model.indexed(as_of)
    entries = {} if index is None else index.entries
    cal = views.calendar_of(policy)
    rows: list[dict[str, Any]] = []
    mixed = False  # rows of parsed states among them: sorted into the ids' order
    for start in range(0, len(ids), SMALL_PAGE):
        states = []
        for request_id in ids[start : start + SMALL_PAGE]:
            entry = entries.get(request_id)
            row = None if entry is None else entry.pipeline_row(as_of, cal)
            if row is not None:
                rows.append(row)  # read off its entry: the projector wrote its assessment
            elif (state := model.peek_request(request_id)) is not None:
                states.append(state)
        if states:
            rows += views.pipeline(states, as_of, policy)
            mixed = True
    if mixed:
        rows.sort(key=_pipeline_key)
    return rows


class _OpenOrder:
    """The pipeline's open requests from the index, read as the page needs them (without
    filters, nothing is copied: the index's own sorted list is walked)."""

    def __init__(
        self, index: ListIndex, owner: str | None, kind: str | None, stage: str | None
    ) -> None:
        self.index = index
        self.ids: list[str] | None = None
        if owner or kind or stage:
            self.ids = index.open_requests(owner, kind, stage)

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else len(self.index.open)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.ids is None:  # a copy: the index changes while a whole list is built
            for opened, request_id in list(self.index.open):
                yield {"opened_key": opened, "request_id": request_id}
            return
        entries = self.index.entries
        for request_id in self.ids:
            yield {"opened_key": entries[request_id].opened_key, "request_id": request_id}


class _OverdueOrder:
    """The overdue list from the index: its length at once, its rows as they are read."""

    def __init__(self, index: ListIndex, as_of: datetime) -> None:
        self.index, self.as_of = index, as_of

    def __len__(self) -> int:
        return self.index.overdue_count(self.as_of)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for o in self.index.iter_overdue(self.as_of):
            yield {"days_overdue": -o.minus_days, "request_id": o.request_id,
                   "reason": o.reason, "_at": o}  # fmt: skip


def _same_shape(key: tuple[Any, ...], after: tuple[Any, ...]) -> bool:
    """Whether a cursor's key is of the list's kind, part for part (numbers as numbers,
    flags as flags, text as text): a key of another list may still compare."""
    if len(key) != len(after):
        return False
    for mine, given in zip(key, after, strict=True):
        if isinstance(mine, bool) or isinstance(given, bool):
            if type(mine) is not type(given):
                return False
        elif isinstance(mine, int | float):
            if not isinstance(given, int | float):
                return False
        elif type(mine) is not type(given):
            return False
    return True


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(_tuple(v) if isinstance(v, list) else v for v in value)


async def _stream_csv(
    request: web.Request, rows: list[dict[str, Any]], columns: list[str], headers: dict[str, str]
) -> web.StreamResponse:
    """CSV written in chunks, the event loop free for other requests between them."""
    response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8", **headers})
    await response.prepare(request)
    await response.write(to_csv([], columns).encode())
    for start in range(0, len(rows), CSV_CHUNK):
        chunk = to_csv(rows[start : start + CSV_CHUNK], columns).split("\n", 1)[1]
        await response.write(chunk.encode())
        await asyncio.sleep(0)
    await response.write_eof()
    return response


async def _stream_json(
    request: web.Request, rows: list[dict[str, Any]], headers: dict[str, str]
) -> web.StreamResponse:
    """A whole list as a JSON array written in chunks of `JSON_CHUNK` rows, the event loop
    free for other requests between them (22 k pipeline rows are 6.5 MB of JSON: encoded
    at once, ~30 ms in which nothing else is answered; ten such lists, ten times that)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
    await response.prepare(request)
    for start in range(0, len(rows), JSON_CHUNK):
        chunk = orjson.dumps(rows[start : start + JSON_CHUNK])
        opening = b"[" if start == 0 else b","
        await response.write(opening + chunk[1:-1])
        await asyncio.sleep(0)
    await response.write(b"]")
    await response.write_eof()
    return response


# each list's order (CONTRACT 5), as a key: a cursor continues after the last row's key
def _pipeline_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return views.pipeline_order(r)  # the instant the clock started, not its text


def _overdue_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (-r["days_overdue"], r["request_id"], r["reason"])


def _abuse_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (not r["flagged"], -r["severity_score"], r["customer_id"])


def _partner_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (not r["at_risk"], r["partner_id"])


def _alert_key(r: dict[str, Any]) -> tuple[Any, ...]:  # newest first: descending
    return (views.text_instant_key(r.get("raised_at")), str(r.get("alert_id", "")))


def _held_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["held_since"], r["inbox_partition"], r["inbox_offset"])


HEAVY_AT_ONCE = 2
SMALL_PAGE = 500  # states parsed at a time for a pipeline's rows (`pipeline_rows`)
FEW_STATES = 100  # a pipeline's states parsed on the event loop; more, in a thread
SHARED_RESULTS = 4  # the results of walks kept for the same question at the same version


class Api:
    def __init__(self, settings: Settings, policy: Policy) -> None:
        self.settings = settings
        self.policy = policy
        self.templates = messages.environment(settings.templates_dir)
        # views that walk every state run in threads, two at most at once: the event loop
        # (/health, one request's view, the broker check) keeps its turn under any load
        self.heavy = asyncio.Semaphore(HEAVY_AT_ONCE)
        # whole lists built on the event loop a slice at a time, as few at once: with ten,
        # each pass of the loop ran ten slices before /health's turn came
        self.whole = asyncio.Semaphore(HEAVY_AT_ONCE)
        # a walk's result, shared by every request asking the same of the same states
        # (`shared`): those in flight, and the last few that landed
        self.flights: dict[tuple[Any, ...], asyncio.Future[Any]] = {}
        self.landed: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.walks_joined = 0  # requests answered by a walk another request had started
        messages.check(self.templates)  # a broken team template stops the API at start

    # -- parameters ----------------------------------------------------------------
    def now(self) -> datetime:
        if self.settings.clock:
            return parse_instant(self.settings.clock, "LEDGER_CLOCK")
        return datetime.now(UTC)

    def as_of(self, request: web.Request) -> datetime:
        """`as_of`, or now; on the next pages of a list, the first page's instant."""
        raw = request.query.get("as_of")
        cursor = _cursor(request)
        if cursor is not None:
            pinned = parse_instant(str(cursor["as_of"]), "cursor")
            if raw is not None and parse_instant(raw, "as_of") != pinned:
                raise Problem(
                    422, "invalid_parameter", {"as_of": "differs from the cursor's instant"}
                )
            return pinned
        return self.now() if raw is None else parse_instant(raw, "as_of")

    def shared(self, request: web.Request, route: str, *params: Any) -> tuple[Any, ...] | None:
        """What a walk's result is shared under: the route, the instant and the view's
        parameters, and the read model's version (any state changed: asked afresh). Only
        as of an instant the request names (`as_of`, or a cursor's): as of now, the
        instant moves and no two requests ask the same. Pages of one list, or analysts
        asking the same month's end, then cost one walk, not one each."""
        if "as_of" not in request.query and "cursor" not in request.query:
            return None
        return (route, self.as_of(request), *params, request.app[READ_MODEL].version)

    async def walk(
        self,
        view: Callable[..., Any],
        *args: Any,
        shared: tuple[Any, ...] | None = None,
        **kwargs: Any,
    ) -> Any:
        """A view over every state: off the event loop, `HEAVY_AT_ONCE` at a time; with
        `shared`, one walk for every request asking it (in flight, or one of the last
        `SHARED_RESULTS` landed). Its result is read, never changed, by those it serves."""
        if shared is None:
            async with self.heavy:
                return await asyncio.to_thread(view, *args, **kwargs)
        if shared in self.landed:
            self.landed.move_to_end(shared)
            return self.landed[shared]
        flight = self.flights.get(shared)
        if flight is None:
            flight = asyncio.ensure_future(self.walk(view, *args, **kwargs))
            self.flights[shared] = flight
            flight.add_done_callback(lambda done: self._landed(shared, done))
        else:
            self.walks_joined += 1
        return await asyncio.shield(flight)  # a request gone does not stop it for the rest

    def _landed(self, shared: tuple[Any, ...], flight: asyncio.Future[Any]) -> None:
        self.flights.pop(shared, None)
        if flight.cancelled() or flight.exception() is not None:
            return  # each waiting request has its error; the next asks afresh
        self.landed[shared] = flight.result()
        while len(self.landed) > SHARED_RESULTS:
            self.landed.popitem(last=False)

    # -- routes --------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        model = request.app[READ_MODEL]
        stream = request.app[STREAM].report()
        watch = request.app[STREAM]
        reachable = watch.broker_reachable
        stalled = stream["status"] == "stalled"
        down = watch.broker_unreachable()
        status = "broker_unreachable" if down else "stalled" if stalled else "ok"
        return _json(
            {
                "status": status,
                "ready": model.ready.is_set() and not stalled,
                "broker_reachable": reachable,
                "stream": stream,
                "read_model_lag": model.lag(),
                "events_folded": model.events_folded(),
                "held": len(model.held),
                "requests": model.counts()[0],
                "customers": model.counts()[1],
                "newest_data_age_s": model.newest_data_age_s(),
            },
            # a load balancer or probe sees at once that no event can be accepted now
            status=503 if down else 200,
        )

    async def pipeline(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        stage = q.get("stage")
        if stage is not None and stage not in STAGES:
            raise Problem(422, "invalid_parameter", {"stage": "must be intake or scored"})
        as_of = self.as_of(request)
        model = request.app[READ_MODEL]
        index = model.indexed(as_of)
        if index is not None:  # the open requests, in order, from the index
            keys = _OpenOrder(index, q.get("owner"), q.get("kind"), stage)

            async def rows_of(page: list[dict[str, Any]]) -> list[dict[str, Any]]:
                ids = [r["request_id"] for r in page]
                entries = index.entries
                if len(ids) <= FEW_STATES or all(
                    (e := entries.get(i)) is not None and e.assessed for i in ids
                ):  # every row read off its entry (a few us), or few states to parse: on
                    # the event loop (in a thread, ten lists contend for the GIL with it)
                    return pipeline_rows(model, ids, as_of, self.policy)
                rows: list[dict[str, Any]] = await self.walk(
                    pipeline_rows, model, ids, as_of, self.policy
                )
                return rows

            return await _listing(
                request, keys, PIPELINE_COLUMNS, _pipeline_key, as_of, build=rows_of,
                gate=self.whole,
            )  # fmt: skip
        owner, kind = q.get("owner"), q.get("kind")
        rows = await self.walk(
            views.pipeline, model.requests_as_of(as_of, not_open), as_of, self.policy,
            owner=owner, kind=kind,
            stage=stage, shared=self.shared(request, "pipeline", owner, kind, stage),
        )  # fmt: skip
        return await _listing(request, rows, PIPELINE_COLUMNS, _pipeline_key, as_of)

    async def overdue(self, request: web.Request) -> web.StreamResponse:
        days = None
        if "days" in request.query:
            try:
                days = int(request.query["days"])
            except ValueError:
                raise Problem(422, "invalid_parameter", {"days": "must be an integer"}) from None
            if not 0 <= days <= MAX_DAYS:
                raise Problem(
                    422, "invalid_parameter", {"days": f"must be between 0 and {MAX_DAYS}"}
                )
        as_of = self.as_of(request)
        model = request.app[READ_MODEL]
        index = model.indexed(as_of)
        if index is not None and days in (None, self.settings.overdue_days):
            # from the index's entries (no state is read), in order as it is read: a
            # page costs its rows (and those before it), not the whole list
            order = _OverdueOrder(index, as_of)

            async def rows_of(page: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return [index.overdue_row(r["_at"]) for r in page]

            return await _listing(
                request, order, OVERDUE_COLUMNS, _overdue_key, as_of, build=rows_of
            )
        days = days if days is not None else self.settings.overdue_days
        rows = await self.walk(
            views.overdue, model.requests_as_of(as_of, never_due), as_of, self.policy,
            days=days,
            unit=self.settings.overdue_unit, shared=self.shared(request, "overdue", days),
        )  # fmt: skip
        return await _listing(request, rows, OVERDUE_COLUMNS, _overdue_key, as_of)

    async def abuse(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("flagged")
        flagged = None
        if raw is not None:
            if raw not in BOOLEANS:
                raise Problem(422, "invalid_parameter", {"flagged": "must be true or false"})
            flagged = raw == "true"
        model = request.app[READ_MODEL]
        as_of = self.as_of(request)
        rows = await self.walk(
            views.abuse, model.customers(), as_of, self.policy, flagged,
            shared=self.shared(request, "abuse", flagged),
        )  # fmt: skip
        return await _listing(request, rows, ABUSE_COLUMNS, _abuse_key, as_of)

    async def report(self, request: web.Request) -> web.Response:
        month = request.query.get("month")
        if month is None:
            raise Problem(422, "invalid_parameter", {"month": "required, as YYYY-MM"})
        try:
            start, _ = report_figures.month_bounds(month)
        except ValueError as exc:
            raise Problem(422, "invalid_parameter", {"month": str(exc)}) from None
        if not 1900 <= start.year <= 2999:
            raise Problem(422, "invalid_parameter", {"month": "must fall between 1900 and 2999"})
        fmt = request.query.get("format", "html")
        if fmt not in REPORT_FORMATS:
            raise Problem(422, "invalid_parameter", {"format": "must be html, md or json"})
        model = request.app[READ_MODEL]
        figures = await self.walk(
            report_figures.nos_and_whys, model.requests(), model.customers(), month, self.policy
        )
        if fmt == "json":
            return _json(figures)
        if fmt == "md":
            text = await asyncio.to_thread(report_pages.markdown, figures)
            return web.Response(text=text, content_type="text/markdown")
        page = await asyncio.to_thread(report_pages.html, figures)  # charts take ~0.3 s
        return web.Response(text=page, content_type="text/html")

    async def partners(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("at_risk")
        at_risk = None
        if raw is not None:
            if raw not in BOOLEANS:
                raise Problem(422, "invalid_parameter", {"at_risk": "must be true or false"})
            at_risk = raw == "true"
        model = request.app[READ_MODEL]
        as_of = self.as_of(request)
        rows = await self.walk(
            partner_views.partners, model.requests(), model.customers(), as_of, self.policy,
            at_risk,
        )  # fmt: skip
        return await _listing(request, rows, PARTNER_COLUMNS, _partner_key, as_of)

    async def partner(self, request: web.Request) -> web.Response:
        partner_id = request.match_info["partner_id"]
        model = request.app[READ_MODEL]
        view = await self.walk(
            partner_views.partner_view, partner_id, model.requests(), model.customers(),
            self.as_of(request), self.policy,
        )  # fmt: skip
        if view is None:
            raise Problem(404, "not_found", f"no partner {partner_id} in the ledger")
        if _wants_csv(request):
            return web.Response(text=to_csv(view["requests"]), content_type="text/csv")
        return _json(view)

    async def customer(self, request: web.Request) -> web.Response:
        customer_id = request.match_info["customer_id"]
        state = request.app[READ_MODEL].customer(customer_id)
        view = (
            None if state is None else views.customer_view(state, self.as_of(request), self.policy)
        )
        if view is None:
            raise Problem(404, "not_found", f"no escalations recorded for customer {customer_id}")
        if _wants_csv(request):
            return web.Response(text=to_csv(view["history"]), content_type="text/csv")
        return _json(view)

    async def request_(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        state = request.app[READ_MODEL].request(request_id)
        view = (
            None if state is None else views.request_view(state, self.as_of(request), self.policy)
        )
        if view is None:
            raise Problem(404, "not_found", f"no request {request_id} in the ledger")
        if _wants_csv(request):
            return web.Response(text=to_csv(view["timeline"]), content_type="text/csv")
        return _json(view)

    async def message(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        fmt = request.query.get("format")
        if fmt is not None and fmt not in MESSAGE_FORMATS:
            raise Problem(422, "invalid_parameter", {"format": "must be json or text"})
        state = request.app[READ_MODEL].request(request_id)
        known = None if state is None else request_as_of(state, self.as_of(request))
        if known is None:
            raise Problem(404, "not_found", f"no request {request_id} in the ledger")
        try:
            drafted = messages.draft(known, self.templates)
        except messages.TemplateError as exc:  # a team's template: checked at start-up too
            raise Problem(500, "template_error", str(exc)) from None
        if drafted is None:
            raise Problem(404, "no_decision", f"request {request_id} has no decision yet")
        as_text = fmt == "text" or (
            fmt is None and "text/plain" in request.headers.get("Accept", "")
        )
        if as_text:
            return web.Response(text=drafted.as_text(), content_type="text/plain")
        return _json(drafted.as_dict())

    async def metrics(self, request: web.Request) -> web.Response:
        as_of = self.as_of(request)
        model = request.app[READ_MODEL]
        row = await model.metrics(as_of)
        if row is None:  # as of before the newest event: refold the requests known then
            row = await self.walk(
                model.metrics_as_of, as_of, self.policy, shared=self.shared(request, "metrics")
            )
        if _wants_csv(request):
            return web.Response(text=to_csv([row]), content_type="text/csv")
        return _json(row)

    async def alerts(self, request: web.Request) -> web.StreamResponse:
        rows = request.app[READ_MODEL].recent_alerts(self.settings.webhooks())
        as_of = self.as_of(request)
        if "as_of" in request.query or "cursor" in request.query:  # only those raised by then
            rows = [r for r in rows if datetime.fromisoformat(r["raised_at"]) <= as_of]
        if "kind" in request.query:
            rows = [r for r in rows if r["kind"] == request.query["kind"]]
        columns = ["alert_id", "kind", "subject_id", "raised_at", "details", "deliveries"]
        return await _listing(request, rows, columns, _alert_key, as_of, newest_first=True)

    async def held(self, request: web.Request) -> web.StreamResponse:
        """Events held for an earlier event of their subject, oldest first, with their age."""
        now = self.as_of(request)
        rows = []
        for note in request.app[READ_MODEL].held.values():
            since = datetime.fromisoformat(note["held_since"])
            inbox = note["inbox"]
            rows.append(
                {
                    "subject": note["subject"],
                    "type": note["type"],
                    "event_id": note["event_id"],
                    "reason": note["reason"],
                    "inbox_partition": inbox["partition"],
                    "inbox_offset": inbox["offset"],
                    "inbox_key": inbox["key"],
                    "held_since": note["held_since"],
                    "age_s": round(max(0.0, (now - since).total_seconds()), 1),
                }
            )
        rows.sort(key=_held_key)
        return await _listing(request, rows, HELD_COLUMNS, _held_key, now)

    async def post_events(self, request: web.Request) -> web.Response:
        body = await request.read()
        parsed = parse_body(body)
        if parsed.errors:  # nothing is published unless every item is valid
            errors = [{"item": e.line, **e.error.as_dict()} for e in parsed.errors]
            raise Problem(422, "invalid_events", errors)
        if not parsed.good:
            raise Problem(422, "invalid_events", [{"item": None, "message": "no events"}])
        watch = request.app[STREAM]
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if watch.broker_unreachable():  # known down: fail at once, nothing is sent
            raise Problem(
                503,
                "broker_unreachable",
                f"the broker at {watch.bootstrap} does not answer (last checked "
                f"{watch.since_checked():.0f} s ago); nothing was published: send the same "
                "events again later",
                headers=retry,
            )
        try:
            await asyncio.wait_for(
                request.app[PUBLISHER].publish(parsed.good), self.settings.publish_timeout_s
            )
        except (TimeoutError, KafkaError, OSError) as exc:
            raise Problem(
                503,
                "broker_unreachable",
                f"the broker at {watch.bootstrap} did not acknowledge within "
                f"{self.settings.publish_timeout_s:g} s ({type(exc).__name__}); some of the "
                "events may have been recorded: send the same events again (their event_id "
                "makes a repeat harmless)",
                headers=retry,
            ) from None
        return _json({"accepted": [str(e.event_id) for e, _ in parsed.good]}, status=202)


PIPELINE_COLUMNS = [
    "request_id", "kind", "title", "owner", "stage", "opened_at", "age_days",
    "business_age_days", "latest_adjusted_score", "recommendation",
]  # fmt: skip
PARTNER_COLUMNS = [
    "partner_id", "at_risk", "flagged_customers", "requests", "open_requests", "escalations",
    "support_asks", "support_unanswered",
]  # fmt: skip
HELD_COLUMNS = [
    "subject", "type", "event_id", "reason", "inbox_partition", "inbox_offset", "inbox_key",
    "held_since", "age_s",
]  # fmt: skip
OVERDUE_COLUMNS = ["request_id", "reason", "owner", "title", "overdue_since", "days_overdue"]
ABUSE_COLUMNS = [
    "customer_id", "escalations", "by_kind", "distinct_partners", "partners_fired",
    "severity_score", "last_escalation_at", "flagged", "reasons",
]  # fmt: skip


def parse_instant(raw: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise Problem(422, "invalid_parameter", {name: "must be an RFC 3339 timestamp"}) from None
    if value.tzinfo is None:
        raise Problem(422, "invalid_parameter", {name: "must carry a UTC offset"})
    try:
        in_range = EARLIEST <= value < LATEST  # comparing converts to UTC, which may overflow
    except OverflowError:
        in_range = False
    if not in_range:
        raise Problem(422, "invalid_parameter", {name: "must be between 1900 and 2999"})
    return value


def _slug(reason: str) -> str:
    return reason.lower().replace(" ", "_").replace("-", "_")


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (unknown route, wrong method, body too large) as JSON too."""
    try:
        return await handler(request)
    except Problem:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else None
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            detail = (
                f"the body is over {request.app[MAX_BODY]} bytes; send the events in several "
                "requests, or use `ledger publish` for a file of any size"
            )
        kept = {h: exc.headers[h] for h in ("Allow", "Retry-After") if h in exc.headers}
        raise Problem(exc.status, _slug(exc.reason), detail, kept) from None


class _JsonErrorProtocol(web_protocol.RequestHandler):
    """Errors found before a route runs (a malformed request line or header) as JSON."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs, checks nothing was sent
        error = "internal_error" if status >= 500 else _slug(HTTPStatus(status).phrase)
        detail = message if status < 500 else None
        response = web.Response(
            status=status,
            body=orjson.dumps({"error": error, "detail": detail}),
            content_type="application/json",
        )
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorProtocol(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # same state, JSON for parse errors
        return server


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve `app` until SIGTERM or SIGINT."""
    runner = _Runner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"ledger API on http://{host}:{port}", flush=True)  # noqa: T201
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


OPEN_PATHS = ("/health", "/openapi.json")  # answered without the bearer token


def _auth(token: str | None) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise Problem(401, "unauthorized", "a valid bearer token is required")
        return await handler(request)

    return check


def build_app(settings: Settings, bootstrap: str, policy: Policy | None = None) -> web.Application:
    api = Api(settings, policy or load_policy(settings.policy_file))
    app = web.Application(
        middlewares=[_json_errors, _auth(settings.api_token)], client_max_size=MAX_BODY_BYTES
    )
    app[MAX_BODY] = MAX_BODY_BYTES
    app.router.add_get("/health", api.health)
    app.router.add_get("/pipeline", api.pipeline)
    app.router.add_get("/overdue", api.overdue)
    app.router.add_get("/customers/abuse", api.abuse)
    app.router.add_get("/partners", api.partners)
    app.router.add_get("/reports/nos-and-whys", api.report)
    app.router.add_get("/partners/{partner_id}", api.partner)
    app.router.add_get("/customers/{customer_id}", api.customer)
    app.router.add_get("/requests/{request_id}", api.request_)
    app.router.add_get("/requests/{request_id}/message", api.message)
    app.router.add_get("/metrics/decisions", api.metrics)
    app.router.add_get("/alerts", api.alerts)
    app.router.add_get("/held", api.held)
    described = orjson.dumps(document())

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=described, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/events", api.post_events)

    async def lifecycle(app: web.Application) -> Any:
        model = ReadModel(settings, bootstrap, api.policy)
        app[READ_MODEL] = model
        # at start-up the broker may still be coming up: wait longer than a request does
        app[PUBLISHER] = await Publisher(settings, bootstrap, connect_timeout=60).start()
        app[STREAM] = StreamWatch(settings, bootstrap)
        tasks = [asyncio.create_task(model.run()), asyncio.create_task(app[STREAM].run())]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await app[PUBLISHER].stop()

    app.cleanup_ctx.append(lifecycle)
    return app


def configure_api_process() -> None:
    configure_process(switch_interval_s=API_SWITCH_INTERVAL_S, role="api")


def main() -> None:
    settings = Settings()
    if not settings.broker:
        raise SystemExit("LEDGER_BROKER is not set: `ledger up` starts a broker and sets it")
    configure_api_process()
    app = build_app(settings, settings.broker)
    asyncio.run(serve(app, settings.api_host, settings.api_port))
