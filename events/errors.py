"""The one error a bad event raises: which field, which rule."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One broken rule: a machine-readable code, the field's dotted path, a readable reason."""

    code: str
    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def as_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "field": self.field, "message": self.message}


class InvalidEvent(ValueError):
    """Raised when bytes or a mapping are not a valid ledger event."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))

    @classmethod
    def single(cls, code: str, field: str | None, message: str) -> InvalidEvent:
        return cls([FieldError(code, field, message)])
