"""Instants in RFC 3339's shape are read by the stdlib (`events.schema._rfc3339`), every
other string by pydantic as before: the two readings agree on every instant, offset and
error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import AfterValidator, AwareDatetime, Field, TypeAdapter, ValidationError

from events.schema import Instant, Timestamp, _rfc3339


def _pydantic_offset(value: datetime) -> datetime:
    """What `_stdlib_offset` did before the stdlib read any instant."""
    offset = value.utcoffset()
    return value if offset is None else value.replace(tzinfo=timezone(offset))


# the readings before: pydantic's parser, then its tzinfo swapped for the stdlib's
PYDANTIC_TIMESTAMP = TypeAdapter(
    Annotated[AwareDatetime, Field(strict=False), AfterValidator(_pydantic_offset)]
)
PYDANTIC_INSTANT = TypeAdapter(Annotated[datetime, AfterValidator(_pydantic_offset)])
TIMESTAMP = TypeAdapter(Timestamp)
INSTANT = TypeAdapter(Instant)


def _reading(adapter: TypeAdapter[Any], text: str) -> tuple[str, Any]:
    try:
        value = adapter.validate_json(orjson.dumps(text))
    except ValidationError as exc:
        return "error", [(e["type"], e["loc"]) for e in exc.errors()]
    return "value", (value, value.isoformat(), value.utcoffset(), type(value.tzinfo))


def _assert_same(text: str) -> None:
    assert _reading(TIMESTAMP, text) == _reading(PYDANTIC_TIMESTAMP, text), text
    assert _reading(INSTANT, text) == _reading(PYDANTIC_INSTANT, text), text


offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59)


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offsets,
    st.integers(0, 6),
    st.booleans(),
)
def test_an_rfc_3339_instant_reads_as_pydantic_reads_it(
    moment: datetime, minutes: int, digits: int, zulu: bool
) -> None:
    zone = timezone(timedelta(minutes=minutes))
    text = moment.replace(tzinfo=zone).isoformat(timespec="seconds")[:19]
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    if zulu:
        text += "Z"
    else:
        sign = "-" if minutes < 0 else "+"
        text += f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    assert _rfc3339(text) == datetime.fromisoformat(text)  # the stdlib read it
    _assert_same(text)
    read = TIMESTAMP.validate_json(orjson.dumps(text))
    assert type(read.tzinfo) is timezone
    assert read.tzinfo is (UTC if zulu else TIMESTAMP.validate_json(orjson.dumps(text)).tzinfo)


@pytest.mark.parametrize(
    "text",
    [
        "2026-06-25 08:43:30Z",  # a space for the T
        "2026-06-25t08:43:30z",
        "2026-06-25T08:43:30",  # no offset: naive
        "2026-06-25T08:43:30.7755149Z",  # seven digits
        "2026-06-25T08:43Z",
        "2026-06-25T08:43:30+0530",
        "2026-06-25T08:43:30+05",
        "2026-06-25T08:43:30+05:30:15",
        "2026-06-25T08:43:30.Z",
        "2026-06-25",
        "2026-06-32T08:43:30Z",  # the shape, but no such day: pydantic words the error
        "2026-02-29T08:43:30Z",
        "2026-13-01T08:43:30Z",
        "2026-06-25T24:00:00Z",
        "2026-06-25T23:59:60Z",
        "2026-06-25T08:43:30+24:00",
        "0000-01-01T00:00:00Z",
        "",
        "now",
    ],
)
def test_every_other_string_reads_as_before(text: str) -> None:
    _assert_same(text)


def test_a_number_or_an_instant_in_python_passes_through() -> None:
    moment = datetime(2026, 6, 25, 8, 43, tzinfo=timezone(timedelta(hours=2)))
    assert _rfc3339(moment) is moment
    assert _rfc3339(1750000000) == 1750000000
    assert INSTANT.validate_python(moment) == moment
    with pytest.raises(ValidationError, match="RFC 3339"):
        TIMESTAMP.validate_json(b"1750000000")


def test_one_zone_object_per_offset() -> None:
    first = TIMESTAMP.validate_json(b'"2026-06-25T08:43:30+05:30"')
    second = INSTANT.validate_json(b'"2026-01-02T00:00:00.5+05:30"')
    assert first.tzinfo is second.tzinfo
    assert first.tzinfo == timezone(timedelta(hours=5, minutes=30))
