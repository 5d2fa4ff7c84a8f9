"""`ledger demo`: the sample history through a real (embedded) broker and validator."""

from __future__ import annotations

import asyncio
from importlib.resources import files

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ledger.config import Settings
from ledger.publisher import Publisher
from ledger.reader import Collected, collect
from ledger.runner import running_ledger
from ledger.topics import Topics


def sample_lines() -> list[bytes]:
    text = files("ledger").joinpath("samples/sample.jsonl").read_bytes()
    return [line for line in text.splitlines() if line.strip()]


def _key_of(line: bytes) -> bytes | None:
    """The key a CRM would use; garbage lines have none."""
    try:
        data = orjson.loads(line)["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    key = data.get("request_id") or data.get("customer_id")
    return key.encode() if isinstance(key, str) else None


async def _push_and_collect(
    settings: Settings, bootstrap: str, console: Console, timeout: float
) -> Collected:
    lines = sample_lines()
    async with Publisher(settings, bootstrap) as publisher:
        await publisher.send_raw(publisher.topics.inbox, [(_key_of(x), x) for x in lines])
    topics = Topics(settings.topic_prefix)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("validating", total=len(lines))
        return await collect(
            settings,
            bootstrap,
            [topics.events, topics.rejected],
            until=lambda c: c.total() >= len(lines),
            timeout=timeout,
            on_progress=lambda c: progress.update(task, completed=c.total()),
        )


def run_demo(settings: Settings, console: Console, timeout: float) -> int:
    topics = Topics(settings.topic_prefix)
    with running_ledger(settings) as running:
        console.print(f"embedded broker on {running.bootstrap}; validator started")
        collected = asyncio.run(_push_and_collect(settings, running.bootstrap, console, timeout))
    accepted = collected.records[topics.events]
    rejected = collected.records[topics.rejected]
    expected = len(sample_lines())
    console.print(
        f"\n{expected} inbox messages -> [green]{len(accepted)} accepted[/] into "
        f"{topics.events}, [red]{len(rejected)} rejected[/] into {topics.rejected}"
    )
    table = Table("inbox p:offset", "code", "field", "reason", title="Rejected, with reasons")
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
    if len(accepted) + len(rejected) != expected:
        console.print("[red]the validator did not account for every message in time[/]")
        return 1
    return 0
