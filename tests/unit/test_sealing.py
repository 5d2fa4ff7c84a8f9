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
    first, second = seal_phases(messages, {"t": [0, 1, 2, 3], "u": [0, 1, 2, 3]})
    assert sorted(i for i, _, _ in first + second) == list(range(len(messages)))
    slots = [(m.topic, p) for _, p, m in second]
    assert len(slots) == len(set(slots))  # one per (topic, partition)
    for index, partition, message in second:  # it really is that partition's last
        later = [i for i, p, m in first if (m.topic, p) == (message.topic, partition)]
        assert all(i < index for i in later)
    assert [i for i, _, _ in first] == sorted(i for i, _, _ in first)  # order kept
