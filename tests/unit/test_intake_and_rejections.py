"""The shared validation of `ledger publish` / `POST /events`, and rejection records."""

from __future__ import annotations

import base64
import hashlib

import orjson

from events import FieldError
from ledger.rules.intake import parse_body, parse_lines
from ledger.rules.rejections import Provenance, rejection_record
from tests.factories import intake, raw, score


def test_bad_lines_are_reported_with_line_numbers_and_good_ones_kept() -> None:
    bad = score("R", fit=9)
    lines = [raw(intake("R")), b"", b"garbage", raw(bad), raw(score("R", name="ok"))]
    parsed = parse_lines(lines)
    assert [e.data.request_id for e, _ in parsed.good] == ["R", "R"]  # type: ignore[union-attr]
    assert parsed.good[0][1] == raw(intake("R"))
    messages = [str(e) for e in parsed.errors]
    assert messages[0].startswith("line 3: not UTF-8 JSON")
    assert messages[1] == "line 4: data.fit: must be between 0 and 5"


def test_body_accepts_one_event_or_an_array_with_the_same_errors() -> None:
    one = parse_body(raw(intake("R")))
    assert len(one.good) == 1 and not one.errors
    bad = score("R", fit=9)
    many = parse_body(orjson.dumps([intake("R"), bad]))
    assert len(many.good) == 1
    assert [str(e) for e in many.errors] == ["line 2: data.fit: must be between 0 and 5"]
    assert [str(e.error) for e in many.errors] == [
        str(e.error) for e in parse_lines([raw(bad)]).errors
    ]
    assert parse_body(b"{").errors[0].error.code == "undecodable"


def test_rejection_record_keeps_the_original_bytes_and_reasons() -> None:
    original = b"\xffnot utf-8"
    record = orjson.loads(
        rejection_record(
            original,
            [FieldError("undecodable", None, "not UTF-8 JSON")],
            Provenance(b"REQ-1", 2, 41),
            "2026-03-01T00:00:00+00:00",
        )
    )
    assert base64.b64decode(record["original_base64"]) == original
    assert record["original_text"] is None
    assert record["inbox"] == {"partition": 2, "offset": 41, "key": "REQ-1"}
    assert record["reasons"] == [
        {"code": "undecodable", "field": None, "message": "not UTF-8 JSON"}
    ]


def test_rejection_of_an_oversized_message_keeps_its_head_size_and_digest() -> None:
    original = b"x" * (3 * 1024 * 1024)
    record = orjson.loads(
        rejection_record(
            original,
            [FieldError("too_large", None, "too big")],
            Provenance(None, 0, 7),
            "2026-03-01T00:00:00+00:00",
        )
    )
    kept = base64.b64decode(record["original_base64"])
    assert kept == original[: 64 * 1024]
    assert record["original_truncated"] is True
    assert record["original_bytes"] == len(original)
    assert record["original_sha256"] == hashlib.sha256(original).hexdigest()
    assert len(orjson.dumps(record)) < 200 * 1024  # fits any topic's default message limit


def test_intake_parsing_of_a_poison_body_is_a_schema_error_not_a_crash() -> None:
    parsed = parse_body(b'[{"type":{}}, {"type":[]}]')
    assert not parsed.good
    assert [(e.line, e.error.code, e.error.field) for e in parsed.errors] == [
        (1, "schema", "type"),
        (2, "schema", "type"),
    ]
