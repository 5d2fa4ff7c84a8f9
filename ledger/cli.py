"""`ledger`: the command line (CONTRACT section 7). An edge: it parses, delegates, prints."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from events import AnyEvent, json_schema
from ledger.config import Settings
from ledger.intake import parse_lines
from ledger.publisher import Publisher

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
    sent = asyncio.run(_publish(settings, settings.broker, parsed.good))
    bad_lines = len({e.line for e in parsed.errors})
    out.print(f"published {sent} event(s); {bad_lines} bad line(s)")
    if parsed.errors:
        raise typer.Exit(1)


async def _publish(settings: Settings, bootstrap: str, good: list[tuple[AnyEvent, bytes]]) -> int:
    async with Publisher(settings, bootstrap) as publisher:
        return await publisher.publish(good)


@app.command()
def up() -> None:
    """Run the validator worker; with no LEDGER_BROKER, on an embedded broker."""
    from ledger.runner import running_ledger

    settings = Settings()
    with running_ledger(settings) as running:
        where = "embedded Tansu" if running.broker else "LEDGER_BROKER"
        out.print(f"ledger up: broker {running.bootstrap} ({where}); Ctrl-C stops it")
        if running.broker:
            out.print(f"  publish with: LEDGER_BROKER={running.bootstrap} ledger publish FILE")
        try:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            code = running.worker.wait()
        except KeyboardInterrupt:
            out.print("stopping…")
            code = 0
    raise typer.Exit(code)


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="seconds to wait for the ledger")] = 120.0,
) -> None:
    """Start everything on an embedded broker, push the sample history through, show it."""
    from ledger.demo import run_demo

    raise typer.Exit(run_demo(Settings(broker=None), out, timeout))


def main() -> None:
    app()
