"""The monthly Nos & Whys: its figures agree with the metrics view, and the page stands
alone (charts inline, nothing fetched, every value escaped)."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest

from events import from_mapping
from ledger.entrypoints.history import generate
from ledger.rules.policy import Policy
from projections import fold
from projections.report import month_bounds, nos_and_whys
from projections.report_pages import html, markdown
from projections.state import request_as_of
from projections.views import metrics
from tests.factories import decision, intake, score

POLICY = Policy()
UNTIL = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


@pytest.fixture(scope="module")
def folded() -> Any:
    return fold(from_mapping(e) for e in generate(requests=300, until=UNTIL, seed=5))


@pytest.mark.parametrize("month", ["2026-02", "2026-03", "2026-05"])
def test_the_months_figures_agree_with_the_metrics_view(folded: Any, month: str) -> None:
    start, end = month_bounds(month)
    report = nos_and_whys(folded.requests.values(), folded.customers.values(), month, POLICY)
    before = metrics(folded.requests.values(), start - timedelta(microseconds=1), POLICY)
    after = metrics(folded.requests.values(), end - timedelta(microseconds=1), POLICY)
    outcomes = {
        k: after["by_outcome"].get(k, 0) - before["by_outcome"].get(k, 0)
        for k in after["by_outcome"]
    }
    assert report["by_outcome"] == {k: v for k, v in outcomes.items() if v}
    assert report["decisions"] == after["decisions"] - before["decisions"] > 0
    # the open maybes are exactly the requests undecided at month end
    at_end = end - timedelta(microseconds=1)
    states = [request_as_of(r, at_end) for r in folded.requests.values()]
    undecided = {s.request_id for s in states if s is not None and s.status == "open"}
    assert {m["request_id"] for m in report["open_maybes"]["oldest_first"]} == undecided
    assert report["open_maybes"]["count"] == len(undecided) > 0
    ages = [m["business_days_open"] for m in report["open_maybes"]["oldest_first"]]
    assert ages == sorted(ages, reverse=True)
    assert len(report["days_to_decide"]["trend"]) == 6
    assert report["days_to_decide"]["trend"][-1]["month"] == month


def test_overrides_are_listed_with_their_rationale() -> None:
    f = fold(
        from_mapping(e)
        for e in (
            intake("R1", at="2026-03-02T09:00:00Z"),
            score("R1", 5, 5, 5, 5, at="2026-03-03T09:00:00Z"),  # recommends a yes
            decision(
                "R1",
                "decline",
                rationale="the partner <script> cannot staff it",
                at="2026-03-04T09:00:00Z",
            ),  # fmt: skip
        )
    )
    report = nos_and_whys(f.requests.values(), f.customers.values(), "2026-03", POLICY)
    assert [(o["request_id"], o["outcome"]) for o in report["overrides"]] == [("R1", "decline")]
    assert report["whys"]["redirects_with_declines"] == {"none recorded": 1}
    page = html(report)
    assert "the partner &lt;script&gt; cannot staff it" in page  # escaped
    assert "<script>" not in page
    assert "the partner <script> cannot staff it" in markdown(report)


def test_the_page_stands_alone(folded: Any) -> None:
    report = nos_and_whys(folded.requests.values(), folded.customers.values(), "2026-03", POLICY)
    page = html(report)
    assert page.count("<svg") == 2  # the outcome chart and the six-month trend
    fetched = re.findall(r"""(?:src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not fetched and "<link" not in page and "<script" not in page
    assert f"<b>{report['decisions']}</b>decisions" in page
    for month in (t["month"] for t in report["days_to_decide"]["trend"]):
        assert month in page
    text = markdown(report)
    assert text.startswith("# Nos & Whys — 2026-03")
    assert f"**{report['decisions']} decisions**" in text


def test_a_month_is_yyyy_mm() -> None:
    assert month_bounds("2026-12")[1].isoformat() == "2027-01-01T00:00:00+00:00"
    for bad in ("2026-13", "March", "2026-3-1", ""):
        with pytest.raises(ValueError, match="YYYY-MM"):
            month_bounds(bad)


def test_stops_are_counted_by_rule_in_words() -> None:
    """Seen in the browser: the stops read "ask:" and "red"; they read as rules now."""
    f = fold(
        from_mapping(e)
        for e in (
            intake("R1", asks=["exclusivity"], icp_overlap_pct=31, at="2026-03-02T09:00:00Z"),
            score(
                "R1",
                red_flags=[{"flag": "no reference customer", "severity": "soft"}],
                at="2026-03-03T09:00:00Z",
            ),
            decision("R1", "decline", at="2026-03-04T09:00:00Z"),
            intake("R2", icp_overlap_pct=12, at="2026-03-02T09:00:00Z"),
            score("R2", at="2026-03-03T09:00:00Z"),
            decision("R2", "decline", at="2026-03-04T09:00:00Z"),
        )
    )
    whys = nos_and_whys(f.requests.values(), f.customers.values(), "2026-03", POLICY)["whys"]
    assert whys["hard_stops"] == {"asks for exclusivity": 1}
    assert whys["soft_stops"] == {
        "ICP overlap below 40%": 2,
        "red flag: no reference customer": 1,
    }


def test_the_months_overrides_are_in_the_order_they_were_decided_across_offsets() -> None:
    """Overrides were sorted by `decided_at`'s text: with CRMs writing their own offsets
    that is not the order of the decisions (10:00+08:00, 02:00Z, came after 09:00Z)."""
    events = []
    for request, at in (
        ("R-late", "2026-03-10T09:00:00Z"),
        ("R-early", "2026-03-10T10:00:00+08:00"),
    ):
        events += [intake(request), score(request), decision(request, "decline", at=at)]
    folded = fold(from_mapping(e) for e in events)
    report = nos_and_whys(folded.requests.values(), folded.customers.values(), "2026-03", POLICY)
    assert [r["request_id"] for r in report["overrides"]] == ["R-early", "R-late"]
    assert [r["decided_at"] for r in report["overrides"]] == [
        "2026-03-10T10:00:00+08:00",
        "2026-03-10T09:00:00+00:00",
    ]  # each as its CRM wrote it


def test_matplotlib_is_loaded_by_the_first_chart_not_by_the_api(folded: Any) -> None:
    """The API imports this module at start; matplotlib (with numpy ~45 MB and ~0.4 s)
    waits for the first page drawn, and two pages drawn at once in threads keep apart."""
    probe = (
        "import sys, ledger.api.app, projections.report_pages as p\n"
        "assert 'matplotlib' not in sys.modules, 'loaded at import'\n"
        "r = {'days_to_decide': {'trend': [{'month': '2026-01', 'median_business_days': 1,"
        " 'p90_business_days': 2}], 'target_business_days': 10}, 'by_outcome': {'hold': 1}}\n"
        "assert p.outcome_chart(r).startswith('<svg')\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)  # noqa: S603
    assert done.returncode == 0, done.stderr
    report = nos_and_whys(folded.requests.values(), folded.customers.values(), "2026-05", POLICY)
    with ThreadPoolExecutor(4) as pool:
        pages = list(pool.map(html, [report] * 8))
    assert len(set(pages)) == 1
    assert pages[0].count("<svg") == 2
