"""Pure folds from ledger events to read models, and the views answered from them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from events.schema import AnyEvent
from projections.state import CustomerState, RequestState, apply_customer, apply_request


@dataclass
class Folded:
    """Every request's and every customer's state, keyed by id."""

    requests: dict[str, RequestState] = field(default_factory=dict)
    customers: dict[str, CustomerState] = field(default_factory=dict)

    def apply(self, event: AnyEvent) -> None:
        if event.type == "escalation":
            key = event.data.customer_id
            customer = apply_customer(self.customers.get(key), event)
            if customer is not None:
                self.customers[key] = customer
            return
        key = event.data.request_id
        request = apply_request(self.requests.get(key), event)
        if request is not None:
            self.requests[key] = request


def fold(events: Iterable[AnyEvent]) -> Folded:
    """Fold a log (in log order) into every read-model state."""
    folded = Folded()
    for event in events:
        folded.apply(event)
    return folded


__all__ = ["CustomerState", "Folded", "RequestState", "apply_customer", "apply_request", "fold"]
