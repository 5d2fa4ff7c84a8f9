"""`python -m workers`: run the ledger's workers against `LEDGER_BROKER` until stopped."""

from __future__ import annotations

import asyncio
import logging
import sys

import faust

from ledger.config import Settings
from ledger.kafka import ensure_ledger_topics
from workers.app import create_app


def main() -> None:
    settings = Settings()
    if not settings.broker:
        sys.exit("LEDGER_BROKER is not set: `ledger up` starts a broker and sets it for you")
    asyncio.run(ensure_ledger_topics(settings, settings.broker))
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = create_app(settings, settings.broker)
    worker = faust.Worker(app, loglevel=logging.WARNING, quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
