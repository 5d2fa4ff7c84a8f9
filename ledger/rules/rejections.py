"""The record the validator writes to `ledger.rejected`: original bytes plus reasons."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from events import MAX_MESSAGE_BYTES, FieldError


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where an inbox message came from."""

    key: bytes | None
    partition: int
    offset: int


def rejection_record(
    original: bytes, reasons: Sequence[FieldError], source: Provenance, rejected_at: str
) -> bytes:
    """JSON with the reasons, the original bytes (base64, and as text when it is UTF-8).

    A message over the size limit keeps only its first `MAX_MESSAGE_BYTES` (with its full
    size and SHA-256): the whole of it could exceed what a topic takes, and a refusal that
    cannot be written would stop the validator."""
    size = len(original)
    truncated = size > MAX_MESSAGE_BYTES
    kept = original[:MAX_MESSAGE_BYTES] if truncated else original
    try:
        text: str | None = kept.decode("utf-8")
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
            "original_base64": base64.b64encode(kept).decode("ascii"),
            "original_text": text,
            "original_bytes": size,
            "original_truncated": truncated,
            "original_sha256": hashlib.sha256(original).hexdigest(),
        }
    )
