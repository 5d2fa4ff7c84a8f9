"""Sealed sends: each partition's last record goes alone, after the rest."""

from __future__ import annotations

import os

from aiokafka.partitioner import DefaultPartitioner

from ledger.kafka import Outgoing, partition_for, seal_phases


def test_partition_for_matches_kafkas_default_partitioner() -> None:
    default = DefaultPartitioner()
    for _ in range(500):
        key = os.urandom(12)
        assert partition_for(key, [0, 1, 2, 3]) == default(key, [0, 1, 2, 3], [0, 1, 2, 3])
    assert partition_for(None, [0, 1, 2]) == 0


def test_the_last_message_of_each_partition_is_held_back() -> None:
    keys = [b"a", b"b", b"c", b"a", b"d", b"a", b"b"]
    messages = [Outgoing("t", k, bytes([i])) for i, k in enumerate(keys)]
    messages.append(Outgoing("u", b"a", b"other topic"))
    partitions = {"t": [0, 1, 2, 3], "u": [0, 1, 2, 3]}
    first, second = seal_phases(messages, partitions)
    sent = [i for indexes in (*first.values(), *second.values()) for i in indexes]
    assert sorted(sent) == list(range(len(messages)))  # each once
    assert all(len(indexes) == 1 for indexes in second.values())  # one per (topic, partition)
    for (topic, partition), indexes in {**first, **second}.items():
        for i in indexes:  # every message goes where the default partitioner puts it
            assert messages[i].topic == topic
            assert partition_for(messages[i].key, partitions[topic]) == partition
    for slot, (last,) in second.items():  # it really is that partition's last, order kept
        assert all(i < last for i in first.get(slot, []))
        assert first.get(slot, []) == sorted(first.get(slot, []))
    assert (("t", partition_for(b"a", [0, 1, 2, 3]))) in first  # "a" has three messages
