"""Topic names (CONTRACT section 2) under the configured prefix, and how they are created."""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000
FOREVER = -1


@dataclass(frozen=True)
class Topics:
    """The ledger's topics for one prefix."""

    prefix: str = ""

    @property
    def inbox(self) -> str:
        return f"{self.prefix}ledger.inbox"

    @property
    def events(self) -> str:
        return f"{self.prefix}ledger.events"

    @property
    def rejected(self) -> str:
        return f"{self.prefix}ledger.rejected"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}ledger.alerts"

    @property
    def deliveries(self) -> str:
        """Webhook delivery status of each alert, keyed by alert_id (an addition to §2)."""
        return f"{self.prefix}ledger.alert-deliveries"

    @property
    def by_subject(self) -> str:
        """Internal: screened inbox messages re-keyed by their own request or customer."""
        return f"{self.prefix}ledger.validator-by-subject"

    @property
    def held(self) -> str:
        """Events held for an earlier event of their subject, keyed by inbox position;
        a null value once judged (an addition to section 2, for `GET /held`)."""
        return f"{self.prefix}ledger.held"

    def retention_ms(self) -> dict[str, int]:
        """Every topic the ledger owns, with its retention (explicit: Tansu needs one)."""
        return {
            self.inbox: 7 * DAY_MS,
            self.by_subject: 7 * DAY_MS,
            self.events: FOREVER,  # the source of truth is never expired
            self.rejected: 30 * DAY_MS,
            self.alerts: FOREVER,
            self.deliveries: 30 * DAY_MS,
            self.held: 7 * DAY_MS,
        }
