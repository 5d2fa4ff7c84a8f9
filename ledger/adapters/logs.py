"""Logging for the ledger's long-running processes (workers, API, mirror): warnings and
errors to standard error, with aiokafka's per-attempt messages rate-limited."""

from __future__ import annotations

import logging
import time


class RateLimited(logging.Filter):
    """aiokafka logs every failed attempt (thousands of lines a minute during a broker
    outage): let each of its messages through once a minute."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self.last.get(key, -self.every_s) < self.every_s:
            return False
        self.last[key] = now
        return True


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimited())
