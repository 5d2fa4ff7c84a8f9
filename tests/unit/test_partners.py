"""The partner's side: its requests, the escalations against it, risk, support asks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from events import from_mapping
from ledger.rules.policy import Policy
from projections import fold
from projections.partners import partner_view, partners
from tests.factories import decision, escalation, intake

POLICY = Policy()
AS_OF = datetime.fromisoformat("2026-04-30T09:00:00+00:00")


def folded(*events: dict[str, Any]) -> Any:
    return fold(from_mapping(e) for e in events)


def history() -> Any:
    return folded(
        # initech: a proposal, and a support ask answered in 3 business days
        intake("P1", partner_id="initech", at="2026-03-02T09:00:00Z"),
        decision("P1", "decline", at="2026-03-06T09:00:00Z"),
        intake("S1", partner_id="initech", kind="vendor_support", at="2026-03-02T09:00:00Z"),
        decision("S1", "decline", name="ds1", at="2026-03-05T09:00:00Z"),
        # and a support ask nobody answered
        intake("S2", partner_id="initech", kind="vendor_support", at="2026-04-01T09:00:00Z"),
        # globex fires partner after partner: flagged; it escalated against initech and
        # fired umbrella
        escalation("globex", "initech", "complaint", name="g1", at="2026-03-10T09:00:00Z"),
        escalation("globex", "umbrella", "partner_fired", name="g2", at="2026-03-11T09:00:00Z"),
        escalation("globex", "acme", "partner_fired", name="g3", at="2026-03-12T09:00:00Z"),
        escalation("globex", "hooli", "partner_fired", name="g4", at="2026-03-13T09:00:00Z"),
        # a calm customer
        escalation("calm", "acme", "complaint", name="c1", at="2026-03-14T09:00:00Z"),
    )


def test_one_partner_has_its_requests_escalations_and_support_asks() -> None:
    f = history()
    view = partner_view("initech", f.requests.values(), f.customers.values(), AS_OF, POLICY)
    assert view is not None
    assert [r["request_id"] for r in view["requests"]] == ["P1", "S1", "S2"]
    assert [(e["customer_id"], e["customer_flagged"]) for e in view["escalations"]] == [
        ("globex", True)
    ]
    assert view["at_risk"] and view["still_serving_flagged"] == ["globex"]
    support = view["support_asks"]
    assert (support["count"], support["answered"], support["unanswered"]) == (2, 1, 1)
    assert support["median_business_days_to_answer"] == 3
    assert support["share_answered_within_target"] == 1.0
    assert support["oldest_unanswered"]["request_id"] == "S2"
    assert support["oldest_unanswered"]["business_days_waiting"] == 21


def test_a_partner_the_flagged_customer_fired_is_no_longer_at_risk() -> None:
    f = history()
    umbrella = partner_view("umbrella", f.requests.values(), f.customers.values(), AS_OF, POLICY)
    assert umbrella is not None
    assert umbrella["flagged_customers"] == ["globex"] and not umbrella["at_risk"]
    assert partner_view("nobody", f.requests.values(), f.customers.values(), AS_OF, POLICY) is None


def test_as_of_leaves_out_what_came_later() -> None:
    f = history()
    early = datetime.fromisoformat("2026-03-10T12:00:00+00:00")
    view = partner_view("initech", f.requests.values(), f.customers.values(), early, POLICY)
    assert view is not None
    # globex had fired nobody yet: not flagged, so initech was not at risk then
    assert not view["at_risk"] and view["escalations"][0]["customer_flagged"] is False
    assert [r["request_id"] for r in view["requests"]] == ["P1", "S1"]


def test_the_list_puts_partners_at_risk_first_and_filters() -> None:
    f = history()
    rows = partners(f.requests.values(), f.customers.values(), AS_OF, POLICY)
    assert [r["partner_id"] for r in rows] == ["initech", "acme", "hooli", "umbrella"]
    at_risk = partners(f.requests.values(), f.customers.values(), AS_OF, POLICY, at_risk=True)
    assert [r["partner_id"] for r in at_risk] == ["initech"]
    assert at_risk[0]["support_unanswered"] == 1 and at_risk[0]["requests"] == 3
