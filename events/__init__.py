"""Ledger events: schemas (pydantic v2) and their orjson codec."""

from events.codec import decode, decode_recorded, encode, from_mapping, json_schema, subject_of
from events.errors import FieldError, InvalidEvent
from events.schema import (
    EVENT_TYPES,
    MAX_MESSAGE_BYTES,
    SUPPORTED_SCHEMA_VERSIONS,
    AnyEvent,
    Decision,
    Escalation,
    Event,
    Intake,
    Revisit,
    Score,
)

__all__ = [
    "EVENT_TYPES",
    "MAX_MESSAGE_BYTES",
    "SUPPORTED_SCHEMA_VERSIONS",
    "AnyEvent",
    "Decision",
    "Escalation",
    "Event",
    "FieldError",
    "Intake",
    "InvalidEvent",
    "Revisit",
    "Score",
    "decode",
    "encode",
    "decode_recorded",
    "from_mapping",
    "json_schema",
    "subject_of",
]
