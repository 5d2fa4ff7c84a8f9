"""The mirror: keeps the embedded ledger's durable copy (`ledger.adapters.durable`) in step
with the broker, every `LEDGER_MIRROR_INTERVAL_S`, and once more when it is asked to stop.

Each sync reads the committed offsets of the ledger's consumer groups *first*, then every
topic of the ledger up to its end, and saves both in one fsynced transaction. A processor
commits an input offset only after its outputs were acknowledged, so the saved offsets
never point past outputs the copy lacks: a ledger restored from the copy resumes like one
whose every process was SIGKILLed at the moment of the sync.

`python -m workers.mirror` (started by `ledger up` with the embedded broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ledger.adapters.config import Settings
from ledger.adapters.durable import Copied, DurableStore
from ledger.adapters.kafka import stop_consumer
from ledger.adapters.process import configure_process

log = logging.getLogger("ledger.mirror")
CHUNK = 50_000  # records per transaction while catching up
SYNC_TIMEOUT_S = 30.0  # a sync that has not reached the ends by then saves what it read


class Mirror:
    """One broker's ledger topics and groups, copied into one store."""

    def __init__(self, settings: Settings, bootstrap: str, store: DurableStore) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.store = store
        self.prefix = f"{settings.topic_prefix}ledger"
        options = settings.kafka_client_options()
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **options,
        )

    async def start(self) -> Mirror:
        await self.admin.start()
        await self.consumer.start()
        return self

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await stop_consumer(self.consumer)
        with contextlib.suppress(Exception):
            await self.admin.close()

    async def sync(self) -> int:
        """Copy what the store lacks; the number of records copied."""
        cluster = await self.consumer._client.fetch_all_metadata()  # noqa: SLF001 - every topic
        topics = {
            t: len(cluster.partitions_for_topic(t) or ())
            for t in cluster.topics()
            if t.startswith(self.prefix)
        }
        tps = [TopicPartition(t, p) for t, n in sorted(topics.items()) for p in range(n)]
        if not tps:
            return 0
        offsets: dict[tuple[str, str, int], int] = {}
        for group, _ in await self.admin.list_consumer_groups():
            if group.startswith(self.prefix + "-"):
                committed = await self.admin.list_consumer_group_offsets(group, partitions=tps)
                for tp, meta in committed.items():
                    if meta is not None and meta.offset >= 0:
                        offsets[(group, tp.topic, tp.partition)] = meta.offset
        ends = await self.consumer.end_offsets(tps)  # read after the offsets, never before
        starts = self.store.next_offsets()
        behind = {tp for tp in tps if ends[tp] > starts.get((tp.topic, tp.partition), 0)}
        copied = 0
        chunk: list[Copied] = []
        if behind:
            self.consumer.assign(sorted(behind))
            for tp in behind:
                self.consumer.seek(tp, starts.get((tp.topic, tp.partition), 0))
            deadline = asyncio.get_running_loop().time() + SYNC_TIMEOUT_S
            while behind and asyncio.get_running_loop().time() < deadline:
                batches = await self.consumer.getmany(*behind, timeout_ms=500, max_records=CHUNK)
                for tp, messages in batches.items():
                    chunk.extend(
                        Copied(tp.topic, tp.partition, m.offset, m.key, m.value,
                               tuple(m.headers), m.timestamp)
                        for m in messages
                    )  # fmt: skip
                    if messages and messages[-1].offset + 1 >= ends[tp]:
                        behind.discard(tp)
                if len(chunk) >= CHUNK and behind:
                    self.store.save(topics, chunk, {})  # no offsets until all is copied
                    copied += len(chunk)
                    chunk = []
        # offsets only with every record they may refer to
        self.store.save(topics, chunk, {} if behind else offsets)
        return copied + len(chunk)


async def run_mirror(
    settings: Settings, bootstrap: str, store: DurableStore, stop: asyncio.Event
) -> None:
    """Sync until `stop` is set, then once more. During a broker outage it retries, with
    one log line when the outage starts and one when it ends."""
    mirror: Mirror | None = None
    down = False
    final = False
    while True:
        try:
            if mirror is None:
                mirror = await Mirror(settings, bootstrap, store).start()
            await mirror.sync()
            if down:
                log.warning("the broker answers again; the copy is in step")
                down = False
        except (KafkaError, OSError) as exc:
            if not down:
                log.warning("cannot reach the broker (%r); the copy waits for it", exc)
                down = True
            if mirror is not None:
                await mirror.stop()
                mirror = None
        if final:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.mirror_interval_s if not down else 2.0)
        final = stop.is_set()
    if mirror is not None:
        await mirror.stop()


def main() -> None:
    settings = Settings()
    bootstrap = settings.broker
    if not bootstrap:
        raise SystemExit("LEDGER_BROKER is not set: `ledger up` starts a broker and sets it")
    configure_process(role="mirror")
    store = DurableStore.in_dir(settings.data_dir)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGTERM only: on Ctrl-C the whole process group gets SIGINT, and the mirror must
        # outlive the workers' last commits (`ledger up` sends SIGTERM after they stopped)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        await run_mirror(settings, bootstrap, store, stop)

    try:
        asyncio.run(run())
    finally:
        store.close()


if __name__ == "__main__":
    main()
