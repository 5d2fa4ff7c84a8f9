"""The metrics partner ops lacked: time to revisit, bridge health, our own responsiveness."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events import from_mapping
from ledger.rules.policy import Policy
from projections import fold
from projections.views import metrics
from tests.factories import decision, intake, revisit

AS_OF = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


def measured(*events: dict[str, Any]) -> dict[str, Any]:
    folded = fold(from_mapping(e) for e in events)
    return metrics(iter(folded.requests.values()), AS_OF, Policy())  # an iterator will do


def test_time_to_revisit_runs_from_the_decision_to_the_revisit() -> None:
    m = measured(
        intake("R1", partner_id="p1"),
        decision("R1", "conditional_no", at="2026-03-04T09:00:00Z"),
        revisit("R1", at="2026-04-03T09:00:00Z"),  # 30 days later
        intake("R2", partner_id="p2"),
        decision("R2", "hold", at="2026-03-04T09:00:00Z"),
        revisit("R2", at="2026-03-14T09:00:00Z"),  # 10 days later
    )
    assert m["median_days_to_revisit"] == 20


def test_bridge_health_is_the_share_of_declined_partners_who_came_back() -> None:
    m = measured(
        intake("A1", partner_id="came-back", at="2026-03-02T09:00:00Z"),
        decision("A1", "decline", at="2026-03-04T09:00:00Z"),
        intake("A2", partner_id="came-back", at="2026-04-02T09:00:00Z"),  # a new request
        intake("B1", partner_id="revisited", at="2026-03-02T09:00:00Z"),
        decision("B1", "decline", at="2026-03-04T09:00:00Z"),
        revisit("B1", "partner_returned", at="2026-05-04T09:00:00Z"),
        intake("C1", partner_id="gone", at="2026-03-02T09:00:00Z"),
        decision("C1", "decline", at="2026-03-04T09:00:00Z"),
        intake("D1", partner_id="earlier", at="2026-01-02T09:00:00Z"),  # before, not after
        intake("D2", partner_id="earlier", at="2026-03-02T09:00:00Z"),
        decision("D2", "decline", at="2026-03-04T09:00:00Z"),
        intake("E1", partner_id="never-declined"),
    )
    assert m["declined_partners"] == 4
    assert m["bridge_health"] == 0.5  # came-back and revisited, of four


def test_our_responsiveness_to_support_asks() -> None:
    m = measured(
        intake("S1", kind="vendor_support", at="2026-03-02T09:00:00Z"),
        decision("S1", "decline", at="2026-03-05T09:00:00Z"),  # 3 business days
        intake("S2", kind="vendor_support", at="2026-03-02T09:00:00Z"),
        decision("S2", "decline", at="2026-03-30T09:00:00Z"),  # 20 business days
        intake("S3", kind="vendor_support", at="2026-06-01T09:00:00Z"),  # still waiting
        intake("P1", kind="partner_proposal"),  # not a support ask
    )
    assert (m["support_asks_answered"], m["support_asks_unanswered"]) == (2, 1)
    assert m["median_business_days_to_answer_support"] == 11.5
    assert m["share_support_answered_within_target"] == 0.5
