"""`ledger`: the command line (CONTRACT section 7). An edge: it parses, delegates, prints."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import urllib.parse
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from aiokafka.errors import KafkaError
from rich.console import Console

from events import AnyEvent, json_schema
from ledger.adapters.config import Settings
from ledger.adapters.publisher import BrokerUnreachable, Publisher
from ledger.rules.intake import parse_lines

app = typer.Typer(
    help="The partner decision ledger: validate, record and query partner decisions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
out = Console()
err = Console(stderr=True)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the envelope and every event type."""
    sys.stdout.write(orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2).decode() + "\n")


@app.command()
def publish(
    file: Annotated[str, typer.Argument(help="JSON Lines file, or - for standard input")],
) -> None:
    """Validate events from JSON Lines and publish the good ones to the inbox."""
    settings = Settings()
    if not settings.broker:
        err.print("[red]LEDGER_BROKER is not set[/]: point it at the ledger's Kafka bootstrap list")
        raise typer.Exit(2)
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        err.print(f"[red]cannot read {file}[/]: {exc.strerror}")
        raise typer.Exit(2) from None
    parsed = parse_lines(data.splitlines())
    for problem in parsed.errors:
        err.print(str(problem), markup=False, highlight=False)
    quiet_kafka_logs()
    try:
        sent = asyncio.run(_publish(settings, settings.broker, parsed.good))
    except BrokerUnreachable as exc:
        err.print(
            f"[red]cannot publish[/]: {exc}; nothing was published. Check that the ledger "
            "is up and LEDGER_BROKER points at it (or raise LEDGER_PUBLISH_TIMEOUT_S).",
            highlight=False,
            soft_wrap=True,  # one line, whatever the terminal's width
        )
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except (TimeoutError, KafkaError, OSError) as exc:
        err.print(
            f"[red]the broker at {settings.broker} stopped answering while publishing[/] "
            f"({type(exc).__name__}): some events may be recorded; run the same command "
            "again when it is back (each event_id is recorded once).",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_UNREACHABLE) from None
    bad_lines = len({e.line for e in parsed.errors})
    out.print(f"published {sent} event(s); {bad_lines} bad line(s)")
    if parsed.errors:
        raise typer.Exit(1)


EXIT_UNREACHABLE = 3  # `ledger publish`: the broker did not answer


def quiet_kafka_logs() -> None:
    """aiokafka logs every failed connection attempt; the command says it once itself."""
    kafka_log = logging.getLogger("aiokafka")
    kafka_log.addHandler(logging.NullHandler())
    kafka_log.propagate = False


async def _publish(settings: Settings, bootstrap: str, good: list[tuple[AnyEvent, bytes]]) -> int:
    async with Publisher(settings, bootstrap) as publisher:
        return await asyncio.wait_for(
            publisher.publish(good), settings.publish_timeout_s + len(good) / 1000
        )


@app.command()
def up() -> None:
    """Run the validator and projection workers and the query API (embedded broker if
    LEDGER_BROKER is unset) until Ctrl-C."""
    import time

    from ledger.adapters.broker import BrokerError
    from ledger.adapters.durable import RestoreError
    from ledger.entrypoints.runner import running_ledger

    settings = Settings()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C stops it, even when it inherited SIGINT ignored (a background job of a
    # non-interactive shell, CI): its children stop on SIGINT whatever they inherited
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with running_ledger(settings) as running:
            where = "embedded Tansu" if running.broker else "LEDGER_BROKER"
            out.print(f"ledger up: broker {running.bootstrap} ({where})")
            if running.restored is not None and running.restored.records:
                r = running.restored
                out.print(
                    f"  restored from {settings.data_dir / 'ledger.db'}: {r.records} records, "
                    f"{r.groups} consumer groups, {r.republished} journaled publishes "
                    f"in {r.seconds:.1f} s"
                )
            out.print(f"  API on http://{settings.api_host}:{settings.api_port}; Ctrl-C stops")
            if running.broker:
                out.print(f"  publish: LEDGER_BROKER={running.bootstrap} ledger publish FILE")
            while running.all_alive():
                time.sleep(0.5)
            err.print("[red]a ledger process exited[/]; stopping the others")
            raise typer.Exit(1)
    except KeyboardInterrupt:
        out.print("stopped")
    except (BrokerError, RestoreError) as exc:
        err.print(f"[red]ledger up: {exc}[/]")
        raise typer.Exit(1) from None


@app.command()
def draft(
    request_id: Annotated[str, typer.Argument(help="the request, e.g. REQ-1001")],
    as_of: Annotated[str | None, typer.Option(help="RFC 3339 instant (default now)")] = None,
    json_: Annotated[bool, typer.Option("--json", help="subject, body and gaps as JSON")] = False,
) -> None:
    """The message to send with a request's latest decision (asks the API)."""
    from ledger.entrypoints.query import QueryError, fetch

    settings = Settings()
    path = f"/requests/{urllib.parse.quote(request_id, safe='')}/message"
    params = {"as_of": as_of, "format": "json" if json_ else "text"}
    try:
        body = fetch(settings.api_url, path, params, settings.api_token, False)
    except QueryError as exc:
        err.print(f"[red]{exc}[/]", markup=True, highlight=False)
        raise typer.Exit(1) from None
    sys.stdout.write(body.decode() + ("" if body.endswith(b"\n") else "\n"))


@app.command()
def report(
    month: Annotated[str, typer.Option(help="the month, as YYYY-MM")],
    directory: Annotated[
        Path, typer.Option("--out", help="directory to write the files to")
    ] = Path("."),
) -> None:
    """The monthly Nos & Whys: writes an HTML page (charts inline) and a Markdown version."""
    from ledger.entrypoints.query import QueryError, fetch

    settings = Settings()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, suffix in (("html", "html"), ("md", "md")):
        params = {"month": month, "format": fmt}
        try:
            body = fetch(
                settings.api_url, "/reports/nos-and-whys", params, settings.api_token, False
            )
        except QueryError as exc:
            err.print(f"[red]{exc}[/]", markup=True, highlight=False)
            raise typer.Exit(1) from None
        path = directory / f"nos-and-whys-{month}.{suffix}"
        path.write_bytes(body)
        written.append(str(path))
    out.print("wrote " + " and ".join(written))


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="seconds to wait for the ledger")] = 120.0,
    keep: Annotated[bool, typer.Option(help="keep the ledger running afterwards")] = False,
) -> None:
    """Start everything on an embedded broker, load a sample history, show the views."""
    from ledger.entrypoints.demo import run_demo

    raise typer.Exit(run_demo(Settings(broker=None), out, timeout, keep))


@app.command("sql")
def sql_command(
    query: Annotated[str | None, typer.Argument(help="a read-only SQL query")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="print CSV")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON array of rows")] = False,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="drop the tables and refold them from the log")
    ] = False,
) -> None:
    """Query the SQL tables (DuckDB under LEDGER_DATA_DIR, or LEDGER_SQL_URL's PostgreSQL)
    read-only; see the README for the tables and their columns."""
    from ledger.adapters.sql import SqlError, WriteRefused, open_store
    from ledger.entrypoints.query import sql_rows_out

    settings = Settings()
    if as_json and as_csv:
        err.print("choose one of --json and --csv")
        raise typer.Exit(2)
    if not rebuild and not query:
        err.print(
            'give a query, e.g. ledger sql "SELECT status, count(*) FROM requests GROUP BY 1"'
        )
        raise typer.Exit(2)
    try:
        store = open_store(settings.sql_url, settings.data_dir)
        try:
            if rebuild:
                _rebuild_sql(settings, store)
            if query:
                columns, rows = store.query(query)
                sql_rows_out(out, columns, rows, as_csv, as_json)
        finally:
            store.close()
    except WriteRefused as exc:
        err.print(f"[red]{exc}[/]", markup=True, highlight=False)
        raise typer.Exit(2) from None
    except SqlError as exc:
        err.print(f"[red]{exc}[/]", markup=True, highlight=False)
        raise typer.Exit(1) from None


def _rebuild_sql(settings: Settings, store: Any) -> None:
    import time

    from workers.sql import rebuild

    if not settings.broker:
        err.print("--rebuild reads the log: set LEDGER_BROKER (`ledger up` prints it)")
        raise typer.Exit(2)
    quiet_kafka_logs()
    started = time.monotonic()
    try:
        records = asyncio.run(rebuild(settings, settings.broker, store))
    except (KafkaError, OSError) as exc:
        err.print(f"[red]cannot read the log from {settings.broker}: {exc!r}[/]")
        raise typer.Exit(3) from None
    err.print(
        f"rebuilt the SQL tables from {records} records in {time.monotonic() - started:.1f} s"
    )


@app.command("export")
def export_command(
    parquet: Annotated[
        Path, typer.Option("--parquet", help="directory for one Parquet file per table")
    ],
) -> None:
    """Write every SQL table as Parquet, for BI tools and spreadsheets."""
    from ledger.adapters.sql import SqlError, open_store

    settings = Settings()
    try:
        store = open_store(settings.sql_url, settings.data_dir)
        try:
            paths = store.export_parquet(parquet)
        finally:
            store.close()
    except SqlError as exc:
        err.print(f"[red]{exc}[/]", markup=True, highlight=False)
        raise typer.Exit(1) from None
    for path in paths:
        out.print(str(path))


query_app = typer.Typer(help="Ask a running ledger (LEDGER_API_URL) for its read models.")
app.add_typer(query_app, name="query")

AsOf = Annotated[str | None, typer.Option("--as-of", help="RFC 3339 instant (default now)")]
Json = Annotated[bool, typer.Option("--json", help="print the API's JSON")]
Csv = Annotated[bool, typer.Option("--csv", help="print CSV")]


def _ask(what: str, path: str, params: dict[str, Any], as_json: bool, as_csv: bool) -> None:
    from ledger.entrypoints.query import QueryError, decode, fetch, render

    settings = Settings()
    if as_json and as_csv:
        err.print("choose one of --json and --csv")
        raise typer.Exit(2)
    try:
        body = fetch(settings.api_url, path, params, settings.api_token, as_csv)
    except QueryError as exc:
        err.print(f"[red]{exc}[/]", markup=True, highlight=False)
        raise typer.Exit(1) from None
    if as_json or as_csv:
        sys.stdout.write(body.decode() + ("" if body.endswith(b"\n") else "\n"))
        return
    render(out, what, decode(body))


@query_app.command("pipeline")
def query_pipeline(
    owner: Annotated[str | None, typer.Option(help="only this owner")] = None,
    kind: Annotated[str | None, typer.Option(help="only this request kind")] = None,
    stage: Annotated[str | None, typer.Option(help="intake or scored")] = None,
    as_of: AsOf = None,
    json_: Json = False,
    csv_: Csv = False,
) -> None:
    """Open requests: undecided, or reopened."""
    params = {"owner": owner, "kind": kind, "stage": stage, "as_of": as_of}
    _ask("pipeline", "/pipeline", params, json_, csv_)


@query_app.command("overdue")
def query_overdue(
    days: Annotated[int | None, typer.Option(help="threshold in days")] = None,
    as_of: AsOf = None,
    json_: Json = False,
    csv_: Csv = False,
) -> None:
    """Overdue maybes, with reason and days overdue."""
    _ask("overdue", "/overdue", {"days": days, "as_of": as_of}, json_, csv_)


@query_app.command("abuse")
def query_abuse(
    flagged: Annotated[bool | None, typer.Option("--flagged/--not-flagged")] = None,
    as_of: AsOf = None,
    json_: Json = False,
    csv_: Csv = False,
) -> None:
    """Per-customer escalation patterns."""
    flag = None if flagged is None else str(flagged).lower()
    _ask("abuse", "/customers/abuse", {"flagged": flag, "as_of": as_of}, json_, csv_)


@query_app.command("metrics")
def query_metrics(as_of: AsOf = None, json_: Json = False, csv_: Csv = False) -> None:
    """Decision metrics."""
    _ask("metrics", "/metrics/decisions", {"as_of": as_of}, json_, csv_)


@query_app.command("request")
def query_request(
    request_id: str, as_of: AsOf = None, json_: Json = False, csv_: Csv = False
) -> None:
    """One request's state and timeline."""
    path = f"/requests/{urllib.parse.quote(request_id, safe='')}"
    _ask("request", path, {"as_of": as_of}, json_, csv_)


@query_app.command("customer")
def query_customer(
    customer_id: str, as_of: AsOf = None, json_: Json = False, csv_: Csv = False
) -> None:
    """One customer's pattern and escalation history."""
    path = f"/customers/{urllib.parse.quote(customer_id, safe='')}"
    _ask("customer", path, {"as_of": as_of}, json_, csv_)


@query_app.command("partner")
def query_partner(
    partner_id: str, as_of: AsOf = None, json_: Json = False, csv_: Csv = False
) -> None:
    """One partner: its requests, escalations against it, flagged customers, support asks."""
    path = f"/partners/{urllib.parse.quote(partner_id, safe='')}"
    _ask("partner", path, {"as_of": as_of}, json_, csv_)


@query_app.command("partners")
def query_partners(
    at_risk: Annotated[
        bool, typer.Option("--at-risk", help="only partners serving a flagged customer")
    ] = False,
    as_of: AsOf = None,
    json_: Json = False,
    csv_: Csv = False,
) -> None:
    """Every partner the ledger knows, those at risk first."""
    _ask("partners", "/partners", {"at_risk": "true" if at_risk else None, "as_of": as_of},
         json_, csv_)  # fmt: skip


@query_app.command("alerts")
def query_alerts(json_: Json = False, csv_: Csv = False) -> None:
    """Recent alerts, newest first."""
    _ask("alerts", "/alerts", {}, json_, csv_)


@query_app.command("held")
def query_held(json_: Json = False, csv_: Csv = False) -> None:
    """Events held for an earlier event of their subject, oldest first."""
    _ask("held", "/held", {}, json_, csv_)


def main() -> None:
    app()
