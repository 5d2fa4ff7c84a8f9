"""Models share their fields-set objects (memory), and every model still knows which
fields it was given, whatever is copied or folded after it."""

from __future__ import annotations

import orjson

from events import decode, decode_recorded, encode
from projections.state import RequestState, apply_request
from tests.factories import intake, score


def _two_requests() -> tuple[RequestState, RequestState]:
    states = []
    for request in ("A-1", "A-2"):
        state = None
        for payload in (intake(request), score(request)):
            state = apply_request(state, decode(orjson.dumps(payload)))
        assert state is not None
        states.append(state)
    return states[0], states[1]


def test_instances_given_the_same_fields_share_one_set() -> None:
    a, b = _two_requests()
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__  # folded (built, replaced)
    assert a.history[0].__pydantic_fields_set__ is b.history[0].__pydantic_fields_set__
    assert a.intake.__pydantic_fields_set__ is b.intake.__pydantic_fields_set__  # validated
    parsed = [RequestState.model_validate_json(s.model_dump_json()) for s in (a, b)]
    assert parsed[0].__pydantic_fields_set__ is parsed[1].__pydantic_fields_set__
    assert parsed[0].timeline[1].__pydantic_fields_set__ is a.timeline[1].__pydantic_fields_set__
    assert parsed == [a, b]


def test_each_model_still_knows_the_fields_it_was_given() -> None:
    a, _ = _two_requests()
    given = a.history[0]
    assert given.data.model_fields_set == {"request_id", "kind", "title", "owner"}
    # the recorded form leaves the defaults out: the fields given, not every field
    again = decode_recorded(encode(given))
    assert again.data.model_fields_set == {"request_id", "kind", "title", "owner"}
    assert orjson.loads(encode(again)) == orjson.loads(encode(given))
    # a copy with more fields has its own set: the originals' are not changed
    copied = given.data.model_copy(update={"description": "more"})
    assert "description" in copied.model_fields_set
    assert "description" not in given.data.model_fields_set
    assert "description" not in again.data.model_fields_set
    assert a.model_fields_set >= {"request_id", "intake", "score", "history"}
    assert "decisions" not in a.model_fields_set
