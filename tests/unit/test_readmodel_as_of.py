"""A view as of a past instant parses only the requests that may show in it: those whose
index entry says they were unchanged since then and have nothing for the view are left
unparsed, and the view's answer is the same as over every state."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from events import from_mapping
from ledger.adapters.config import Settings
from ledger.api.readmodel import ReadModel
from ledger.entrypoints.history import generate
from ledger.rules.policy import Policy
from projections import fold, views
from projections.listindex import never_due, not_open
from projections.records import policy_tag, request_record

UNTIL = datetime.fromisoformat("2026-06-30T09:00:00+00:00")


class Record:
    def __init__(self, key: bytes, value: bytes) -> None:
        self.key, self.value, self.timestamp = key, value, 0


@pytest.fixture(scope="module")
def model() -> ReadModel:
    folded = fold(from_mapping(e) for e in generate(requests=400, until=UNTIL, seed=7))
    model = ReadModel(Settings(clock=UNTIL.isoformat()), "127.0.0.1:1")
    tag = policy_tag(Policy())
    records = [
        Record(k.encode(), request_record(s, s.model_dump_json().encode(), Policy(), tag))
        for k, s in folded.requests.items()
    ]
    model._apply(model.requests_topic, records)  # noqa: SLF001
    return model


def same(rows: Any) -> Any:
    return orjson.loads(orjson.dumps(rows))


@pytest.mark.parametrize("back", [0, 3, 10, 30, 90, 400])
def test_the_pipeline_as_of_a_past_instant_is_the_same(model: ReadModel, back: int) -> None:
    as_of = UNTIL - timedelta(days=back)
    walked = list(model.requests_as_of(as_of, not_open))
    want = views.pipeline(model.requests(), as_of, Policy())
    assert same(views.pipeline(walked, as_of, Policy())) == same(want)
    if back in (3, 10, 30):  # most had been decided and left alone by then
        assert len(walked) < len(model.requests()) / 2
    for owner in {r["owner"] for r in want[:3]}:
        assert same(views.pipeline(walked, as_of, Policy(), owner=owner)) == same(
            views.pipeline(model.requests(), as_of, Policy(), owner=owner)
        )


@pytest.mark.parametrize("back", [0, 3, 10, 30, 90, 400])
@pytest.mark.parametrize("days", [1, 10, 60])
def test_the_overdue_list_as_of_a_past_instant_is_the_same(
    model: ReadModel, back: int, days: int
) -> None:
    as_of = UNTIL - timedelta(days=back)
    walked = list(model.requests_as_of(as_of, never_due))
    want = views.overdue(model.requests(), as_of, Policy(), days=days)
    assert same(views.overdue(walked, as_of, Policy(), days=days)) == same(want)
    if back == 10:
        assert len(walked) < len(model.requests())  # the declined, say, left unparsed


@pytest.mark.parametrize("back", [0, 3, 10, 30, 90, 400])
def test_the_metrics_as_of_a_past_instant_are_the_same(model: ReadModel, back: int) -> None:
    """Requests unchanged since the instant add their parts as held; the rest refold."""
    as_of = UNTIL - timedelta(days=back)
    want = views.metrics(model.requests(), as_of, Policy())
    assert same(model.metrics_as_of(as_of, Policy())) == same(want)
    assert want["decisions"] > 0 or back == 400


def test_metrics_under_another_policy_are_refolded(model: ReadModel) -> None:
    base = Policy().model_dump()
    holidays = [f"2026-{m:02d}-{d:02d}" for m in range(1, 7) for d in (4, 5, 11, 12, 18)]
    other = Policy.model_validate(  # parts of their own: other business days, other advice
        {**base, "fair": {**base["fair"], "decline_below": 4.5},
         "decisions": {**base["decisions"], "holidays": holidays}}
    )  # fmt: skip
    as_of = UNTIL - timedelta(days=10)
    want = views.metrics(model.requests(), as_of, other)
    assert want != views.metrics(model.requests(), as_of, Policy())  # the policy tells
    assert same(model.metrics_as_of(as_of, other)) == same(want)
