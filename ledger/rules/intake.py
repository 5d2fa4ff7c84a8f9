"""Reading events from JSON Lines or a JSON body: the validation `publish` and the API share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from events import AnyEvent, FieldError, InvalidEvent, decode, from_mapping


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    error: FieldError

    def __str__(self) -> str:
        return f"line {self.line}: {self.error}"


@dataclass(frozen=True, slots=True)
class Parsed:
    """The good events (with their original bytes) and an error per broken rule."""

    good: list[tuple[AnyEvent, bytes]]
    errors: list[LineError]


def parse_lines(lines: Iterable[bytes]) -> Parsed:
    """Validate JSON Lines; blank lines are skipped, every other line is judged alone."""
    good: list[tuple[AnyEvent, bytes]] = []
    errors: list[LineError] = []
    for number, line in enumerate(lines, start=1):
        raw = line.strip()
        if not raw:
            continue
        try:
            good.append((decode(raw), raw))
        except InvalidEvent as exc:
            errors.extend(LineError(number, e) for e in exc.errors)
    return Parsed(good, errors)


def parse_body(body: bytes) -> Parsed:
    """Validate one JSON event or a JSON array of them; errors are numbered by item (from 1)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Parsed([], [LineError(1, FieldError("undecodable", None, f"not JSON: {exc}"))])
    items = obj if isinstance(obj, list) else [obj]
    good: list[tuple[AnyEvent, bytes]] = []
    errors: list[LineError] = []
    for number, item in enumerate(items, start=1):
        try:
            event = from_mapping(item)
        except InvalidEvent as exc:
            errors.extend(LineError(number, e) for e in exc.errors)
            continue
        raw = orjson.dumps(item)
        if len(raw) > 64 * 1024:
            errors.append(LineError(number, FieldError("too_large", None, "over 64 KiB")))
            continue
        good.append((event, raw))
    return Parsed(good, errors)
