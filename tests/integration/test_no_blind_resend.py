"""A batch the broker wrote but whose answer was lost is never sent again (Tansu has no
idempotent producer): one copy in the topic, and the send fails, for the worker to start
afresh and read back what its last batches wrote.

Real at the TCP level: the broker advertises a port served by the outage test's proxy, which
passes the produce request through, drops the broker's answer, then drops the connection,
as a network cut between the two would. aiokafka, left alone, sends the batch again on a
new connection, and the broker writes it twice (the outage test once found an event in
ledger.events twice that way).
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from ledger.adapters.broker import EmbeddedBroker, free_port
from ledger.adapters.config import Settings
from ledger.adapters.kafka import (
    UNKNOWN_FATE,
    Outgoing,
    ensure_topics,
    resend_only_unwritten,
    send_sealed,
)
from ledger.adapters.reader import collect
from tests.integration.test_outage import Proxy

pytestmark = pytest.mark.integration


async def test_a_batch_whose_answer_was_lost_is_not_sent_again(tmp_path: Path) -> None:
    port, target = free_port(), free_port()
    proxy = Proxy(port, target)
    await proxy.mend()
    with EmbeddedBroker(tmp_path / "tansu.log", port=target, advertised_port=port):
        bootstrap = f"127.0.0.1:{port}"
        settings = Settings(broker=bootstrap, data_dir=tmp_path / "data")
        topic = "no-blind-resend"
        await ensure_topics(bootstrap, {topic: 3_600_000}, 1, settings.kafka_client_options())
        producer = resend_only_unwritten(
            AIOKafkaProducer(
                bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                **settings.kafka_client_options(),
            )
        )  # fmt: skip
        await producer.start()
        try:
            await send_sealed(producer, [Outgoing(topic, b"k", b"before")])  # connected
            proxy.muted = True
            sending = asyncio.create_task(send_sealed(producer, [Outgoing(topic, b"k", b"lost")]))
            await asyncio.wait_for(proxy.dropped.wait(), 30)  # the broker wrote it, answered
            await proxy.cut()  # and its answer never comes: the connection drops
            proxy.muted = False
            await proxy.mend()
            with pytest.raises(UNKNOWN_FATE):
                await asyncio.wait_for(sending, 30)
            await send_sealed(producer, [Outgoing(topic, b"k", b"after")])  # sends go on
        finally:
            await producer.stop()
        out = await collect(settings, bootstrap, [topic], lambda c: False, 3)
        values = [r.value for r in out.records[topic]]
        assert values == [b"before", b"lost", b"after"]  # written once, in order
        await proxy.cut()


async def test_a_batch_left_unsealed_is_read_back_whole(tmp_path: Path) -> None:
    """A worker killed between a sealed send's two phases leaves a batch whose records
    after its first lie past the end Tansu reports; reading back what it wrote (to know
    its verdicts as given) must see them all, or they would be written a second time."""
    from aiokafka import TopicPartition

    from workers.runtime import read_since

    port = free_port()
    with EmbeddedBroker(tmp_path / "tansu.log", port=port):
        bootstrap = f"127.0.0.1:{port}"
        settings = Settings(broker=bootstrap, data_dir=tmp_path / "data")
        topic = "unsealed"
        await ensure_topics(bootstrap, {topic: 3_600_000}, 1, settings.kafka_client_options())
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            await send_sealed(producer, [Outgoing(topic, b"k", b"sealed")])
            batch = producer.create_batch()  # the first phase alone: the writer died then
            for n in range(3):
                batch.append(key=b"k", value=f"unsealed {n}".encode(), timestamp=None)
            batch.close()
            await (await producer.send_batch(batch, topic, partition=0))
        finally:
            await producer.stop()
        tp = TopicPartition(topic, 0)
        records, ends = await read_since(settings, bootstrap, [topic], {tp: 0})
        assert [r.value for r in records] == [b"sealed", b"unsealed 0", b"unsealed 1",
                                             b"unsealed 2"]  # fmt: skip
        assert ends[tp] == 4
        records, ends = await read_since(settings, bootstrap, [topic], {tp: 1})
        assert [r.value for r in records] == [b"unsealed 0", b"unsealed 1", b"unsealed 2"]
        assert (await read_since(settings, bootstrap, [topic], {}, ends_only=True))[1][tp] >= 2


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_a_table_rebuilds_a_batch_left_unsealed_whole(tmp_path: Path, store: str) -> None:
    """The same for a table's changelog, when the unsealed batch is bigger than one read
    hands (`READ_MAX`): recovery stopped at the first record that reached the reported
    end, and lost the state changes after it in that batch."""
    from workers.runtime import READ_MAX, make_table

    port = free_port()
    with EmbeddedBroker(tmp_path / "tansu.log", port=port):
        bootstrap = f"127.0.0.1:{port}"
        settings = Settings(broker=bootstrap, data_dir=tmp_path / "data", store=store)
        table = make_table(settings, "unsealed")
        await ensure_topics(bootstrap, {table.topic: 3_600_000}, settings.partitions,
                            settings.kafka_client_options())  # fmt: skip
        partition = table.partition(b"k0")
        named = (f"k{n}".encode() for n in itertools.count())
        mine = (key for key in named if table.partition(key) == partition)
        first, keys = next(mine), list(itertools.islice(mine, READ_MAX + 10_000))
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=False,
            max_batch_size=16 << 20, max_request_size=32 << 20,
        )  # fmt: skip
        await producer.start()
        try:
            await send_sealed(producer, [Outgoing(table.topic, first, b"0")])
            batch = producer.create_batch()  # the first phase alone: the writer died then
            for n, key in enumerate(keys):
                assert batch.append(key=key, value=str(n).encode(), timestamp=None) is not None
            batch.close()
            await (await producer.send_batch(batch, table.topic, partition=partition))
        finally:
            await producer.stop()
        read = await table.recover(settings, bootstrap, {partition})
        assert read == len(keys) + 1
        assert {key for _, key in table.owned_keys()} == {first, *keys}
        assert table.get(keys[-1]) == len(keys) - 1
