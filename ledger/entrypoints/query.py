"""`ledger query`: the API's answers as rich tables, JSON or CSV (an HTTP client, nothing more);
and `ledger sql`'s rows, printed the same ways."""

from __future__ import annotations

import csv
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table


class QueryError(RuntimeError):
    """The API could not be reached or refused the query; the message says why."""


def fetch(
    base_url: str, path: str, params: Mapping[str, Any], token: str | None, csv: bool
) -> bytes:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    url = f"{base_url.rstrip('/')}{path}" + (f"?{query}" if query else "")
    headers = {"Accept": "text/csv" if csv else "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - the configured API URL
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        raise QueryError(f"{exc.code} from {url}: {detail}") from None
    except urllib.error.URLError as exc:
        raise QueryError(
            f"cannot reach the ledger API at {base_url} ({exc.reason}); is `ledger up` running? "
            "Set LEDGER_API_URL if it listens elsewhere."
        ) from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return str(value)


HEADERS = {
    "request_id": "request", "customer_id": "customer", "age_days": "age",
    "business_age_days": "bus.age", "latest_adjusted_score": "score",
    "recommendation": "recommends", "distinct_partners": "partners",
    "partners_fired": "fired", "severity_score": "severity", "escalations": "esc",
    "days_overdue": "days over", "occurred_at": "when", "partner_id": "partner",
}  # fmt: skip


def rows_table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    """A table whose last column wraps and whose others stay on one line."""
    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=f"{title} ({len(rows)})", title_justify="left")
    for i, column in enumerate(columns):
        last = i == len(columns) - 1
        table.add_column(
            HEADERS.get(column, column),
            no_wrap=not last,
            overflow="fold" if last else "ellipsis",
            ratio=1 if last else None,
        )
    for row in rows:
        table.add_row(*(_text(row.get(c)) for c in columns))
    return table


# What fits a terminal; --json and --csv carry every field.
TERMINAL_COLUMNS = {
    "pipeline": [
        "request_id",
        "owner",
        "stage",
        "age_days",
        "business_age_days",
        "latest_adjusted_score",
        "recommendation",
        "title",
    ],
    "overdue": ["request_id", "reason", "owner", "days_overdue", "title"],
    "abuse": [
        "customer_id",
        "escalations",
        "distinct_partners",
        "partners_fired",
        "severity_score",
        "flagged",
        "reasons",
    ],
    "alerts": ["raised_at", "kind", "subject_id", "delivery"],
    "held": ["subject", "type", "reason", "inbox_partition", "inbox_offset", "age_s"],
    "timeline": ["occurred_at", "type", "actor", "summary"],
    "escalations": ["occurred_at", "partner_id", "kind", "severity", "summary"],
}


PARTNER_REQUEST_COLUMNS = ["request_id", "status", "last_outcome", "opened_at", "kind", "title"]
PARTNER_ESCALATION_COLUMNS = [
    "customer_id", "customer_flagged", "kind", "severity", "occurred_at", "request_id",
]  # fmt: skip


def render(console: Console, what: str, payload: Any) -> None:
    """Print one API answer as tables."""
    if what in ("request", "customer"):
        items = payload.get("timeline") if what == "request" else payload.get("history")
        summary = {k: v for k, v in payload.items() if k not in ("timeline", "history")}
        table = Table(
            "field", "value", title=f"{what} {payload.get(what + '_id')}", title_justify="left"
        )
        for key, value in summary_rows(summary).items():
            table.add_row(key, _text(value))
        console.print(table)
        name = "timeline" if what == "request" else "escalations"
        console.print(rows_table(name, items or [], TERMINAL_COLUMNS[name]))
        return
    if what == "partner":
        table = Table("field", "value", title=f"partner {payload.get('partner_id')}",
                      title_justify="left")  # fmt: skip
        for key in ("at_risk", "flagged_customers", "still_serving_flagged"):
            table.add_row(key, _text(payload.get(key)))
        for key, value in (payload.get("support_asks") or {}).items():
            table.add_row(f"support asks: {key}", _text(value))
        console.print(table)
        requests = [
            {**r, "opened_at": _minute(r.get("opened_at"))} for r in payload.get("requests") or []
        ]
        escalations = [
            {**e, "occurred_at": _minute(e.get("occurred_at"))}
            for e in payload.get("escalations") or []
        ]
        console.print(rows_table("requests", requests, PARTNER_REQUEST_COLUMNS))
        console.print(rows_table("escalations", escalations, PARTNER_ESCALATION_COLUMNS))
        return
    if what == "metrics":
        table = Table("metric", "value", title="decision metrics", title_justify="left")
        for key, value in payload.items():
            table.add_row(key, _text(value))
        console.print(table)
        return
    if what == "alerts":
        payload = [
            {**row, "raised_at": _minute(row.get("raised_at")), "delivery": delivery_summary(row)}
            for row in payload
        ]
    console.print(rows_table(what, payload, TERMINAL_COLUMNS.get(what)))


def _minute(instant: Any) -> Any:
    return instant[:16].replace("T", " ") if isinstance(instant, str) else instant


def delivery_summary(alert: dict[str, Any]) -> str:
    """`url: status` per webhook (`ledger.alerts` only when no webhook is configured)."""
    deliveries = alert.get("deliveries") or {}
    if not deliveries:
        return "no webhooks"
    return "; ".join(f"{url}: {d.get('status', '?')}" for url, d in deliveries.items())


def summary_rows(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if v not in (None, [], {})}


def decode(body: bytes) -> Any:
    return orjson.loads(body)


def _cell(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


def sql_rows_out(
    console: Console, columns: list[str], rows: list[tuple[Any, ...]], as_csv: bool, as_json: bool
) -> None:
    """`ledger sql`'s answer: a table, CSV, or JSON objects."""
    if as_json:
        objects = [dict(zip(columns, (_cell(v) for v in row), strict=True)) for row in rows]
        sys.stdout.write(orjson.dumps(objects, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else _cell(v) for v in row] for row in rows])
        return
    table = Table(*columns, title=f"{len(rows)} rows", title_justify="left")
    for row in rows:
        table.add_row(*("" if v is None else str(_cell(v)) for v in row))
    console.print(table)
