"""The body of `POST /event`: validation and the original's defaults, turning a request into an op.

The original took anything (`null`, arrays, `"false"` as success, `"abc"` durations as null). Here a
body must be a JSON object whose fields have the right types; obviously equal forms (`"42"`,
`"false"`) are coerced, anything else is an `EventError` listing each field path and its reason.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from observer.errors import EventError
from observer.ops import js_number, now_timestamp
from observer.values import (
    MAX_EXACT_INT,
    finite,
    json_type_name,
    loads_beyond_double,
    number_from_text,
)

MAX_EVENT_ID_LENGTH = 200
UTF8_BOM = b"\xef\xbb\xbf"
#: What an event_id may not hold: C0 and C1 controls, DEL, and the Unicode line separators (it is
#: written raw before a tab at the start of a spool record, and into the ingested-ids file).
_NOT_PRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


#: Optional op keys the original copied only when the client sent them, in the line's order.
_PRESENT_WHEN_GIVEN = ("staffer_id", "sig_hash", "event_kind", "role", "city", "state", "count")


class EventIn(BaseModel):
    """What a client may send. Unknown fields are dropped; a null is kept where the original kept it."""

    model_config = ConfigDict(extra="ignore", strict=True)

    event_id: str | None = Field(None, min_length=1, max_length=MAX_EVENT_ID_LENGTH)
    timestamp: str | None = None
    endpoint: str | None = None
    input_summary: str | None = None
    success: bool | None = None
    duration_ms: int | float | None = None
    output_summary: str | None = None
    error: str | None = None
    source: str | None = None
    staffer_id: str | None = None
    sig_hash: str | None = None
    event_kind: str | None = None
    role: str | None = None
    city: str | None = None
    state: str | None = None
    count: int | None = None
    rescue_attempted: bool | None = None
    rescue_succeeded: bool | None = None

    @field_validator("success", "rescue_attempted", "rescue_succeeded", mode="before")
    @classmethod
    def _boolean(cls, value: object) -> object:
        if value is True or value is False or value is None:
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if value is not None and not isinstance(value, bool):
            raise ValueError("must be a boolean (true or false)")
        return value

    @field_validator("duration_ms", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        number = _number(value)
        if number is not None and number < 0:
            raise ValueError("must not be negative")
        return number

    @field_validator("count", mode="before")
    @classmethod
    def _count(cls, value: object) -> object:
        number = _number(value)
        if number is None:
            return None
        if isinstance(number, float):
            if not number.is_integer():
                raise ValueError("must be a whole number")
            number = int(number)
        if number < 0:
            raise ValueError("must not be negative")
        return number

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("must be an ISO-8601 date-time string")
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"is not an ISO-8601 date-time: {value[:60]!r}") from None
        return value

    @field_validator("event_id", mode="before")
    @classmethod
    def _event_id(cls, value: object) -> object:
        if isinstance(value, str) and _NOT_PRINTABLE.search(value):
            raise ValueError(
                "must not contain tabs, line breaks or other control characters (printable only)"
            )
        return value

    def to_fields(self) -> dict[str, Any]:
        """Apply the original's defaults (contract.md): the op's present fields, validated, in the
        line's key order (so `op_line` writes them as they are)."""
        values = self.__dict__
        given = self.model_fields_set
        success = values["success"] is True
        fields: dict[str, Any] = {
            "timestamp": values["timestamp"] or now_timestamp(),
            "endpoint": "scenario:fill" if values["endpoint"] is None else values["endpoint"],
            "input_summary": (
                self._default_summary()
                if values["input_summary"] is None
                else values["input_summary"]
            ),
            "success": success,
            "duration_ms": 0 if values["duration_ms"] is None else values["duration_ms"],
            "output_summary": self._default_output(success),
        }
        if "error" in given:
            fields["error"] = values["error"]
        fields["source"] = "scenario" if values["source"] is None else values["source"]
        for key in _PRESENT_WHEN_GIVEN:
            if key in given:
                fields[key] = values[key]
        fields["rescue_attempted"] = values["rescue_attempted"] is True
        fields["rescue_succeeded"] = values["rescue_succeeded"] is True
        return fields

    def _default_summary(self) -> str:
        """The original's `${event_kind} ${role}×${count} in ${city}, ${state}`, "?" for a missing part."""
        values = self.__dict__
        kind, role, count = values["event_kind"], values["role"], values["count"]
        city, state = values["city"], values["state"]
        if count is None:
            count = "?"
        elif count > MAX_EXACT_INT:  # (never negative here)
            count = js_number(count)  # the double the original held: 1e+21, 12345678901234567000
        return (
            f"{'?' if kind is None else kind} {'?' if role is None else role}"
            f"×{count}"
            f" in {'?' if city is None else city}, {'?' if state is None else state}"
        )

    def _default_output(self, success: bool) -> str:
        if self.output_summary is not None:
            return self.output_summary
        if success:
            return "filled"
        return self.error if self.error is not None else "failed"


def parse_event(body: bytes) -> EventIn:
    """Parse and validate one request body, or raise `EventError` saying what is wrong and where."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        data = _load_unusual(body, exc)
    if not isinstance(data, dict):
        raise EventError(
            f"the body must be a JSON object, got {json_type_name(data)}", status=400
        ) from None
    try:
        return EventIn.model_validate(data)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(part) for part in error["loc"]), "reason": _reason(error)}
            for error in exc.errors(include_url=False)
        ]
        summary = "; ".join(f"{d['field']}: {d['reason']}" for d in details)
        raise EventError(f"invalid event: {summary}", details=details) from None


def _load_unusual(body: bytes, error: orjson.JSONDecodeError) -> Any:
    """What orjson refused but the original read: a body after a UTF-8 BOM (its `req.json()`
    ignored one, as RFC 8259 allows), and numbers beyond a double (refused by field, 422)."""
    if body.startswith(UTF8_BOM):
        body = body[len(UTF8_BOM) :]
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            error = exc
    if str(error).startswith("number is infinity"):
        try:
            return loads_beyond_double(body)
        except ValueError as exc:
            raise EventError(f"invalid JSON: {exc}", status=400) from None
    raise EventError(f"invalid JSON: {error}", status=400) from None


def _number(value: object) -> int | float | None:
    """A JSON number, or a string in JSON's number form ("42", "-3.5"); booleans are not numbers.

    Every JSON parser here hands over ints a double can hold; only a string can hold a bigger one.
    """
    if value is None or type(value) is int:
        return value
    if type(value) is float:
        return finite(value)
    if isinstance(value, str):
        return number_from_text(value)
    raise ValueError("must be a number")


def _reason(error: Any) -> str:
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error["type"] == "string_type":
        return "must be a string"
    return message
