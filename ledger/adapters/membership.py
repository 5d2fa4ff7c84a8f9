"""A worker restarted after a SIGKILL takes its partitions back at once.

A killed consumer stays a member of its group until its session times out (6 s by
default), and only then does the group rebalance to the process that replaced it: on
the embedded broker a SIGKILLed worker processed again after ~11 s. So each worker
records its member id per group in its data directory, in a file it holds an exclusive
lock on for as long as it runs. A new process that gets that lock knows the previous
holder is dead (the kernel drops a dead process's locks, SIGKILL included), and asks
the group coordinator to remove the dead member (LeaveGroup by member id) before it
joins. A process that cannot get the lock (another live worker on the same directory)
evicts nothing and records nothing, so a live member is never removed by another.

Nothing here is needed for correctness: a failed eviction only means waiting for the
session timeout, as before, and is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.group import LeaveGroupRequest

from ledger.adapters.config import Settings

log = logging.getLogger(__name__)
GROUP_COORDINATOR = 0  # FindCoordinator's key type for a consumer group
EVICT_TIMEOUT_S = 10.0


class MemberFile:
    """The member id a worker had in one group, under an exclusive lock while it runs."""

    def __init__(self, data_dir: Path, group: str) -> None:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", group)
        self.path = data_dir / "members" / f"{name}.member"
        self._fd: int | None = None

    def claim(self) -> bool:
        """Take the lock: True if no live process holds it (any earlier holder is dead).
        A directory it cannot write: False (no removal, no record; logged)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            log.warning("cannot keep the member id in %s (%s): a restart after a kill "
                        "will wait for the dead member's session", self.path, exc)  # fmt: skip
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def previous(self) -> str | None:
        """The member id the last holder recorded (None: none)."""
        if self._fd is None:
            return None
        recorded = os.pread(self._fd, 1024, 0).decode(errors="replace").strip()
        return recorded or None

    def record(self, member_id: str) -> None:
        """Keep `member_id` for the next holder. Never raises: it is called from the
        rebalance listener before the tables recover, and aiokafka swallows a listener's
        exception, which would skip their recovery."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, member_id.encode(), 0)
        except OSError as exc:
            log.warning("cannot record the member id in %s (%s)", self.path, exc)

    def release(self) -> None:
        """Clear the id (a clean stop leaves its group itself) and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


async def evict(settings: Settings, bootstrap: str, group: str, member_id: str) -> bool:
    """Ask `group`'s coordinator to remove the (dead) member `member_id`: True if it did.
    An unknown member (its session had timed out already) or any failure: False."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **settings.kafka_client_options())
    try:
        async with asyncio.timeout(EVICT_TIMEOUT_S):
            await client.bootstrap()
            node = await client.coordinator_lookup(GROUP_COORDINATOR, group)
            response: Any = await client.send(node, LeaveGroupRequest(group, member_id))
    except Exception as exc:  # noqa: BLE001 - an eviction is only a shortcut
        log.warning("%s: could not remove the dead member %s (%r)", group, member_id, exc)
        return False
    finally:
        await client.close()
    if response.error_code != 0:
        log.info("%s: member %s is gone already (error %d)", group, member_id, response.error_code)
        return False
    log.warning("%s: removed the dead member %s left by a killed worker", group, member_id)
    return True


def member_id_of(consumer: Any) -> str | None:
    """The consumer's member id in its group (aiokafka keeps it on its coordinator)."""
    coordinator = getattr(consumer, "_coordinator", None)
    member_id = getattr(coordinator, "member_id", None)
    return member_id if isinstance(member_id, str) and member_id else None


async def wait_members(settings: Settings, group: str, members: int, timeout: float = 60) -> None:
    """Until `group` is stable with `members` members: a rebalance is over and every
    member has its partitions (a benchmark's clock, a test's next step)."""
    options = settings.kafka_client_options()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker, **options)
    await admin.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            [described] = await admin.describe_consumer_groups([group])
            [(_, _, state, *_, found)] = described.groups
            if state == "Stable" and len(found) == members:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{group} did not settle with {members} members")
    finally:
        await admin.close()
