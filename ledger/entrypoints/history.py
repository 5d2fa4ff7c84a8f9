"""A realistic, reproducible partner-operations history for `ledger demo` (and tests).

A few hundred requests over the first half of 2026: partner proposals, customer demands
and vendor-support asks, scored and decided mostly as the F.A.I.R. policy recommends
(sometimes not: overrides), with conditional noes and holds that are revisited, pilots
that scale or stall, requests that sit undecided for weeks, and a handful of customers
who fire one partner after another.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from events import from_mapping
from ledger.rules.policy import FairPolicy, assess

NAMESPACE = uuid.UUID("0b9f6c1e-5d0e-4c2a-9a57-3f1d2b7c9e01")
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
OWNERS = ["m.okafor", "a.lindqvist", "j.kowalska", "r.haddad", "s.brandt"]
SOURCES = ["hubspot-emea", "salesforce-na", "pipedrive-apac"]
# each CRM's local offset, as a CRM writes its instants (`generate(regional=True)`)
SOURCE_OFFSETS = {
    "hubspot-emea": timezone(timedelta(hours=1)),
    "salesforce-na": timezone(timedelta(hours=-5)),
    "pipedrive-apac": timezone(timedelta(hours=8)),
}
PARTNERS = [
    "northwind",
    "initech",
    "hooli",
    "umbrella",
    "vandelay",
    "stark-it",
    "wayne-data",
    "soylent-cloud",
    "tyrell-sec",
    "cyberdyne-ops",
    "oscorp-digital",
    "gringotts-pay",
    "wonka-ux",
    "acme-integrators",
    "duff-analytics",
    "krusty-consulting",
    "monarch-dev",
    "nakatomi-systems",
    "pied-piper",
    "prestige-worldwide",
    "dunder-it",
    "sterling-ops",
]
CUSTOMERS = [
    "globex",
    "contoso",
    "fabrikam",
    "adventure-works",
    "litware",
    "proseware",
    "lucerne",
    "tailspin",
    "wingtip",
    "woodgrove",
    "margie-travel",
    "blue-yonder",
    "coho-winery",
    "fourth-coffee",
    "alpine-ski",
    "relecloud",
]
ABUSIVE = ["globex", "tailspin", "blue-yonder", "relecloud"]
PROPOSALS = [
    "Co-sell our connector with {p} in {r}",
    "{p} wants a joint marketplace listing",
    "{p} proposes a referral agreement for {r}",
    "Resell bundle with {p} for mid-market",
    "{p} asks for a co-marketing launch in {r}",
]
DEMANDS = [
    "{c} wants {n}% off renewal with no scope change",
    "{c} demands go-live in two weeks",
    "{c} asks {p} to skip the security review",
    "{c} wants {p} to cut QA to meet budget",
    "{c} requests an on-site team at offshore rates",
]
SUPPORT = [
    "{p} asks for MDF for a webinar series in {r}",
    "{p} needs sandbox access for a pilot",
    "{p} requests solution-engineering help on a bid",
    "{p} asks for deal registration relief",
]
REGIONS = ["DACH", "the Nordics", "Benelux", "Iberia", "the UK", "France", "the US East"]


class _Writer:
    def __init__(self, rng: random.Random, until: datetime) -> None:
        self.rng = rng
        self.until = until
        self.events: list[dict[str, Any]] = []
        self.count = 0

    def add(self, kind: str, at: datetime, data: dict[str, Any], actor: str) -> bool:
        if at > self.until:
            return False
        self.count += 1
        self.events.append(
            {
                "event_id": str(uuid.uuid5(NAMESPACE, f"demo-{self.count}")),
                "type": kind,
                "schema_version": 1,
                "occurred_at": at.isoformat(),
                "source": self.rng.choice(SOURCES),
                "actor": actor,
                "data": data,
            }
        )
        return True


def _workday(at: datetime) -> datetime:
    while at.weekday() >= 5:
        at += timedelta(days=1)
    return at


def _later(rng: random.Random, at: datetime, lo: float, hi: float) -> datetime:
    return _workday(at + timedelta(days=rng.uniform(lo, hi)))


def generate(
    requests: int = 300, until: datetime | None = None, seed: int = 7, regional: bool = False
) -> list[dict[str, Any]]:
    """Events (as JSON-able dicts), in time order, all valid and lifecycle-consistent.
    Instants are in UTC; `regional`: each event's in its source CRM's local offset (the
    same instants), as CRMs send them."""
    until = until or datetime(2026, 6, 30, 9, 0, tzinfo=UTC)
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    w = _Writer(rng, until)
    span = (until - START).total_seconds() - 5 * 86400
    for i in range(requests):
        opened = _workday(START + timedelta(seconds=rng.uniform(0, span)))
        _request(w, rng, f"REQ-{2000 + i}", opened)
    _escalations(w, rng)
    w.events.sort(key=lambda e: e["occurred_at"])
    if regional:
        for event in w.events:
            zone = SOURCE_OFFSETS.get(event["source"])
            if zone is not None:
                local = datetime.fromisoformat(event["occurred_at"]).astimezone(zone)
                event["occurred_at"] = local.isoformat()
    return w.events


def _request(w: _Writer, rng: random.Random, request: str, opened: datetime) -> None:
    owner = rng.choice(OWNERS)
    partner = rng.choice(PARTNERS)
    kind = rng.choices(["partner_proposal", "customer_demand", "vendor_support"], [5, 2, 3])[0]
    fill = {
        "p": partner,
        "r": rng.choice(REGIONS),
        "c": rng.choice(CUSTOMERS),
        "n": rng.choice([15, 20, 30, 40]),
    }
    templates = {
        "partner_proposal": PROPOSALS,
        "customer_demand": DEMANDS,
        "vendor_support": SUPPORT,
    }[kind]
    intake: dict[str, Any] = {
        "request_id": request,
        "kind": kind,
        "title": rng.choice(templates).format(**fill),
        "owner": owner,
        "partner_id": partner,
        "icp_overlap_pct": rng.randint(20, 95),
    }
    if kind == "customer_demand":
        intake["customer_id"] = fill["c"]
        intake["asks"] = rng.sample(
            [
                "discount_without_scope_change",
                "unrealistic_timeline",
                "cost_cut_quality",
                "non_compliant",
            ],
            2,
        )
    else:
        intake["asks"] = rng.sample(["co_sell", "co_market", "marketplace", "mdf", "pilot"], 2)
        if rng.random() < 0.06:
            intake["asks"].append(rng.choice(["exclusivity", "price_parity"]))
        intake["value_estimate"] = rng.randrange(10_000, 400_000, 5_000)
    w.add("intake", opened, intake, owner)
    if rng.random() < 0.07:
        return  # never scored: sits in the pipeline
    scored = _later(rng, opened, 0.5, 4)
    score = _score(rng, request, kind)
    if not w.add("score", scored, score, owner):
        return
    if rng.random() < 0.1:
        return  # scored but left undecided for weeks
    _decide(w, rng, request, owner, scored, score, intake, cycle=0)


def _score(rng: random.Random, request: str, kind: str) -> dict[str, Any]:
    base = 2 if kind == "customer_demand" else 4
    dims = {
        d: max(0, min(5, round(rng.gauss(base, 1.1))))
        for d in ("fit", "advantage", "integrity", "readiness")
    }
    score: dict[str, Any] = {"request_id": request, **dims}
    if rng.random() < 0.3:
        score["risks"] = [
            {
                "factor": rng.choice(["regulatory_exposure", "data_handling", "channel_conflict"]),
                "multiplier": rng.choice([0.8, 0.9, 0.95]),
                "critical": rng.random() < 0.15,
            }
        ]
    if kind == "customer_demand" and rng.random() < 0.5:
        score["red_flags"] = [{"flag": "discount without scope change", "severity": "soft"}]
    return score


def _decide(
    w: _Writer,
    rng: random.Random,
    request: str,
    owner: str,
    since: datetime,
    score: dict[str, Any],
    intake: dict[str, Any],
    cycle: int,
) -> None:
    recommended = assess(
        from_mapping(_wrap("score", score)).data,  # type: ignore[arg-type]
        from_mapping(_wrap("intake", intake)).data,  # type: ignore[arg-type]
        FairPolicy(),
    ).recommendation
    outcome = recommended
    if rng.random() < 0.12:
        outcome = rng.choice(["provisional_yes", "conditional_no", "decline", "hold"])
    slow = rng.random() < 0.25
    decided = _later(rng, since, 8 if slow else 0.5, 21 if slow else 7)
    data: dict[str, Any] = {
        "request_id": request,
        "outcome": outcome,
        "rationale": _rationale(outcome),
    }
    if outcome == "conditional_no":
        data["checklist"] = rng.sample(
            [
                "Named owner for the joint plan",
                "Two reference customers",
                "Lead follow-up SLA",
                "Solution page live",
                "Security questionnaire completed",
            ],
            3,
        )
        data["revisit_on"] = (decided + timedelta(days=30)).date().isoformat()
    elif outcome == "hold":
        data["revisit_on"] = (decided + timedelta(days=21)).date().isoformat()
    elif outcome == "provisional_yes":
        data["pilot"] = {
            "scope": "Two joint opportunities in one region",
            "success_metric": "One closed deal within the pilot window",
        }
    elif outcome == "decline":
        data["redirect"] = rng.choice(["directory", "community", "api_guide", "office_hours"])
    if not w.add("decision", decided, data, owner):
        return
    if outcome == "provisional_yes":
        roll = rng.random()
        if roll < 0.5:
            w.add(
                "decision",
                _later(rng, decided, 35, 85),
                {
                    "request_id": request,
                    "outcome": "scaled",
                    "rationale": "Pilot hit its success metric; rolling out to all regions.",
                },
                owner,
            )
        elif roll < 0.7:
            w.add(
                "decision",
                _later(rng, decided, 40, 60),
                {
                    "request_id": request,
                    "outcome": "withdrawn",
                    "rationale": "Partner could not staff the pilot.",
                },
                owner,
            )
        return
    if outcome in ("conditional_no", "hold") and cycle == 0 and rng.random() < 0.55:
        revisited = _later(rng, decided, 18 if outcome == "hold" else 25, 40)
        trigger = rng.choice(["scheduled", "partner_returned"])
        if w.add("revisit", revisited, {"request_id": request, "trigger": trigger}, owner):
            better = {**score, **{d: min(5, int(score[d]) + 1) for d in ("readiness", "fit")}}
            better.pop("risks", None)
            if rng.random() < 0.8:  # some revisits are left hanging: overdue again
                _decide(w, rng, request, owner, revisited, better, intake, cycle=1)


def _wrap(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": str(NAMESPACE),
        "type": kind,
        "schema_version": 1,
        "occurred_at": START.isoformat(),
        "source": "demo",
        "data": data,
    }


def _rationale(outcome: str) -> str:
    return {
        "provisional_yes": "Strong fit and a credible plan: pilot with a 45-day review.",
        "conditional_no": "Good fit, not ready yet: come back when the checklist is done.",
        "decline": "Does not fit our ICP or asks for terms we do not give; redirected.",
        "hold": "A critical risk needs mitigation before anything else.",
    }.get(outcome, outcome)


def _escalations(w: _Writer, rng: random.Random) -> None:
    for customer in ABUSIVE:  # fire partner after partner, with abuse in between
        at = _workday(START + timedelta(days=rng.uniform(5, 40)))
        for partner in rng.sample(PARTNERS, rng.randint(3, 4)):
            kinds = ["unrealistic_demand", "discount_pressure", "abusive_conduct", "partner_fired"]
            for kind in kinds[rng.randint(0, 2) :]:
                at = _later(rng, at, 2, 12)
                w.add(
                    "escalation",
                    at,
                    {
                        "customer_id": customer,
                        "partner_id": partner,
                        "kind": kind,
                        "severity": 5 if kind in ("abusive_conduct", "partner_fired") else 3,
                        "summary": f"{customer} vs {partner}: {kind.replace('_', ' ')}",
                    },
                    "s.brandt",
                )
    for _ in range(14):  # ordinary friction from ordinary customers
        customer = rng.choice([c for c in CUSTOMERS if c not in ABUSIVE])
        at = _workday(START + timedelta(days=rng.uniform(0, 170)))
        w.add(
            "escalation",
            at,
            {
                "customer_id": customer,
                "partner_id": rng.choice(PARTNERS),
                "kind": rng.choice(["complaint", "scope_creep", "threat_to_churn"]),
                "severity": rng.randint(1, 3),
            },
            "s.brandt",
        )
