"""The Quix Streams peer (issue 11): the ledger's work written as a Quix Streams app, to
measure our runtime against on the same data in the same run. Not part of the product.

    .venv-quix/bin/python -m bench.quix_peer --broker HOST:PORT --inbox TOPIC
        --events N --out PREFIX --state-dir DIR

Per inbox message, keyed by its subject as the contract asks, in one stateful step:
decode and schema-check it (`events.decode`), judge it by the lifecycle rules against the
subject's lifecycle state (`ledger.rules.lifecycle.admit`), and for an admitted event fold
it into the request's or customer's read-model state (`projections.state`) and look for
alerts on the way (`projections.alerts.event_alerts`): the validator's and the
projector's work, with both states in Quix's RocksDB state store (changelogged to Kafka,
as ours are). Admitted events go to `PREFIX events`, refusals to `PREFIX rejected`.

It stops after N messages and prints one JSON line: when the first and the last message
were processed, and a digest of every read-model state (sha256 over the sorted keys and
their state JSON) for the harness to check against the pure fold of the log.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from quixstreams import Application
from quixstreams.models import TopicConfig

from bench.digest import digest_of
from events import decode
from ledger.rules.lifecycle import Fact, Refusal, SubjectState, admit
from ledger.rules.policy import Policy
from projections.alerts import event_alerts
from projections.state import CustomerState, RequestState, apply_customer, apply_request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--inbox", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--out", required=True, help="prefix of the output topics")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args()

    app = Application(
        broker_address=args.broker,
        consumer_group=f"{args.out}quix-peer",
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        consumer_extra_config={"session.timeout.ms": 6000},
    )
    config = TopicConfig(num_partitions=1, replication_factor=1,
                         extra_config={"retention.ms": "86400000"})  # fmt: skip
    inbox = app.topic(args.inbox, key_deserializer="str", value_deserializer="bytes")
    events = app.topic(f"{args.out}events", value_serializer="bytes", config=config)
    rejected = app.topic(f"{args.out}rejected", value_serializer="bytes", config=config)
    policy = Policy()
    final: dict[str, bytes] = {}  # each read-model state's latest JSON: the digest's input
    seen = {"n": 0, "first": 0.0, "last": 0.0, "alerts": 0}

    def judge(raw: bytes, key: str, _ts: int, _headers: Any, state: Any) -> tuple[bool, bytes]:
        if not seen["n"]:
            seen["first"] = time.time()
        seen["n"] += 1
        if seen["n"] >= args.events:
            seen["last"] = time.time()
            app.stop()
        try:
            event = decode(raw)
            fact = Fact.of_validated_json(orjson.loads(raw))
        except Exception as exc:  # noqa: BLE001 - every message gets a verdict
            return False, orjson.dumps(
                {"error": str(exc)[:200], "raw": raw.decode(errors="replace")}
            )
        customer = event.type == "escalation"
        life_key, fold_key = ("life:c", "fold:c") if customer else ("life:r", "fold:r")
        verdict = admit(SubjectState.from_json(state.get(life_key)), fact)
        if isinstance(verdict, Refusal):
            return False, orjson.dumps({"code": verdict.code.value, "message": verdict.message})
        state.set(life_key, verdict.to_json())
        stored = state.get(fold_key)
        when = min(event.occurred_at, datetime.now(UTC))
        if customer:
            before_c = None if stored is None else CustomerState.model_validate_json(stored)
            after_c = apply_customer(before_c, event)
            if after_c is not None and after_c is not before_c:
                seen["alerts"] += len(event_alerts(None, after_c, when, policy, 10, "calendar"))
                dumped = after_c.model_dump_json()
                state.set(fold_key, dumped)
                final["c:" + key] = dumped.encode()
        else:
            before_r = None if stored is None else RequestState.model_validate_json(stored)
            after_r = apply_request(before_r, event)
            if after_r is not None and after_r is not before_r:
                seen["alerts"] += len(event_alerts(before_r, after_r, when, policy, 10, "calendar"))
                dumped = after_r.model_dump_json()
                state.set(fold_key, dumped)
                final["r:" + key] = dumped.encode()
        return True, raw

    sdf = app.dataframe(inbox).apply(judge, stateful=True, metadata=True)
    sdf.filter(lambda v: v[0]).apply(lambda v: v[1]).to_topic(events)
    sdf.filter(lambda v: not v[0]).apply(lambda v: v[1]).to_topic(rejected)
    app.run()
    ended = time.time()  # after the final checkpoint: states and outputs flushed
    digest = digest_of(final)
    (args.state_dir / "final.json").write_bytes(
        orjson.dumps({k: v.decode() for k, v in final.items()})
    )  # for the harness to show where the states part from the fold's, if they do
    rss = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) / 1024
    print(orjson.dumps({
        "events": seen["n"], "first": seen["first"], "last": seen["last"], "flushed": ended,
        "digest": digest, "states": len(final), "alerts": seen["alerts"],
        "peak_rss_mb": rss,
    }).decode(), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
