"""The record the validator writes to `ledger.rejected`: original bytes plus reasons."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from events import FieldError


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where an inbox message came from."""

    key: bytes | None
    partition: int
    offset: int


def rejection_record(
    original: bytes, reasons: Sequence[FieldError], source: Provenance, rejected_at: str
) -> bytes:
    """JSON with the reasons, the original bytes (base64, and as text when it is UTF-8)."""
    try:
        text: str | None = original.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return orjson.dumps(
        {
            "rejected_at": rejected_at,
            "reasons": [r.as_dict() for r in reasons],
            "inbox": {
                "partition": source.partition,
                "offset": source.offset,
                "key": source.key.decode("utf-8", "replace") if source.key is not None else None,
            },
            "original_base64": base64.b64encode(original).decode("ascii"),
            "original_text": text,
        }
    )
