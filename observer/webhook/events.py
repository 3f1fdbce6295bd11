"""An event as a client sends it (`POST /event`, each item of `POST /events`): validation and the
original's defaults, turning a request into an op.

The original took anything (`null`, arrays, `"false"` as success, `"abc"` durations as null). Here an
event must be a JSON object whose fields have the right types; obviously equal forms (`"42"`,
`"false"`) are coerced, anything else is an `EventError` listing each field path and its reason.

The checks are plain functions over the parsed object rather than a pydantic model: this runs for
every event on the webhook's hot path, where building a model cost more than the whole op line. The
usual body (every field of its own type) passes with one dictionary lookup and one type test per
field; only a body with a problem is looked at again, field by field in the order of `EVENT_FIELDS`,
to list every problem.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
import orjson

from observer.errors import DecodeFailed, EventError
from observer.ops import js_number, now_timestamp, op_line
from observer.values import (
    MAX_EXACT_INT,
    finite,
    json_type_name,
    loads_refused,
    number_from_text,
)

MAX_EVENT_ID_LENGTH = 200
UTF8_BOM = b"\xef\xbb\xbf"
#: What an event_id may not hold: C0 and C1 controls, DEL, and the Unicode line separators (it is
#: written raw before a tab at the start of a spool record, and into the ingested-ids file).
_NOT_PRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

#: Optional op keys the original copied only when the client sent them, in the line's order.
_PRESENT_WHEN_GIVEN = ("staffer_id", "sig_hash", "event_kind", "role", "city", "state", "count")


# ── one field each ──────────────────────────────────────────────────────────────────────────────
# Each check takes the parsed JSON value and returns the value to keep, or raises ValueError with
# the reason a client reads. null is kept wherever the original kept it.


def _text(value: object) -> object:
    if value is None or type(value) is str:
        return value
    raise ValueError("must be a string")


def _event_id(value: object) -> object:
    if value is None:
        return None
    if type(value) is not str:
        raise ValueError("must be a string")
    if _NOT_PRINTABLE.search(value):
        raise ValueError(
            "must not contain tabs, line breaks or other control characters (printable only)"
        )
    if not value:
        raise ValueError("String should have at least 1 character")
    if len(value) > MAX_EVENT_ID_LENGTH:
        raise ValueError(f"String should have at most {MAX_EVENT_ID_LENGTH} characters")
    return value


def _boolean(value: object) -> object:
    if value is True or value is False or value is None:
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "false"):
            return word == "true"
    raise ValueError("must be a boolean (true or false)")


def _duration(value: object) -> object:
    number = _number(value)
    if number is not None and number < 0:
        raise ValueError("must not be negative")
    return number


def _count(value: object) -> object:
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


def _timestamp(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 date-time string")
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"is not an ISO-8601 date-time: {value[:60]!r}") from None
    return value


def _number(value: object) -> int | float | None:
    """A JSON number, or a string in JSON's number form ("42", "-3.5"); booleans are not numbers.

    Every JSON parser here hands over ints a double can hold; only a string can hold a bigger one.
    """
    if value is None or type(value) is int:
        return value  # type: ignore[return-value]
    if type(value) is float:
        return finite(value)
    if isinstance(value, str):
        return number_from_text(value)
    raise ValueError("must be a number")


#: Every field a client may send and its check, in the order problems are listed. Unknown fields
#: are dropped.
EVENT_FIELDS: dict[str, Callable[[object], object]] = {
    "event_id": _event_id,
    "timestamp": _timestamp,
    "endpoint": _text,
    "input_summary": _text,
    "success": _boolean,
    "duration_ms": _duration,
    "output_summary": _text,
    "error": _text,
    "source": _text,
    "staffer_id": _text,
    "sig_hash": _text,
    "event_kind": _text,
    "role": _text,
    "city": _text,
    "state": _text,
    "count": _count,
    "rescue_attempted": _boolean,
    "rescue_succeeded": _boolean,
}


# ── the event ───────────────────────────────────────────────────────────────────────────────────


class EventIn:
    """A validated event: the known fields the client sent, each as its check returned it.

    A field reads as an attribute (`event.duration_ms`), None when absent; `to_fields()` gives
    the op with the original's defaults.
    """

    __slots__ = ("given",)

    def __init__(self, given: dict[str, Any]) -> None:
        self.given = given

    def __getattr__(self, name: str) -> Any:
        if name in EVENT_FIELDS:
            return self.given.get(name)
        raise AttributeError(name)

    @property
    def event_id(self) -> str | None:
        return self.given.get("event_id")

    def to_fields(self, now: str | None = None) -> dict[str, Any]:
        """Apply the original's defaults (contract.md): the op's present fields, validated, in the
        line's key order (so `op_line` writes them as they are). `now`: the default timestamp."""
        given = self.given
        get = given.get
        success = get("success") is True
        timestamp, endpoint = get("timestamp"), get("endpoint")
        summary, duration = get("input_summary"), get("duration_ms")
        fields: dict[str, Any] = {
            "timestamp": timestamp or now or now_timestamp(),
            "endpoint": "scenario:fill" if endpoint is None else endpoint,
            "input_summary": (
                _default_summary(
                    get("event_kind"), get("role"), get("count"), get("city"), get("state")
                )
                if summary is None
                else summary
            ),
            "success": success,
            "duration_ms": 0 if duration is None else duration,
            "output_summary": _default_output(given, success),
        }
        if "error" in given:
            fields["error"] = given["error"]
        source = get("source")
        fields["source"] = "scenario" if source is None else source
        for key in _PRESENT_WHEN_GIVEN:
            if key in given:
                fields[key] = given[key]
        fields["rescue_attempted"] = get("rescue_attempted") is True
        fields["rescue_succeeded"] = get("rescue_succeeded") is True
        return fields


def _default_summary(kind: Any, role: Any, count: Any, city: Any, state: Any) -> str:
    """The original's `${event_kind} ${role}×${count} in ${city}, ${state}`, "?" for a missing part
    (None, or unset in a decoded event); `count` as validated."""
    if count is None or count is UNSET:
        count = "?"
    elif count > MAX_EXACT_INT:  # (never negative here)
        count = js_number(count)  # the double the original held: 1e+21, 12345678901234567000
    return (
        f"{'?' if kind is None or kind is UNSET else kind}"
        f" {'?' if role is None or role is UNSET else role}×{count}"
        f" in {'?' if city is None or city is UNSET else city},"
        f" {'?' if state is None or state is UNSET else state}"
    )


def _default_output(given: dict[str, Any], success: bool) -> str:
    output = given.get("output_summary")
    if output is not None:
        return output
    if success:
        return "filled"
    error = given.get("error")
    return error if error is not None else "failed"


# ── from bytes ──────────────────────────────────────────────────────────────────────────────────


def parse_event(body: bytes) -> EventIn:
    """Parse and validate one request body, or raise `EventError` saying what is wrong and where
    (400: not JSON or not an object; 422: a field)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        data = load_unusual(body, exc)
    if type(data) is not dict:
        raise EventError(
            f"the body must be a JSON object, got {json_type_name(data)}", status=400
        ) from None
    return validate_event(data)


def validate_event(data: dict[str, Any]) -> EventIn:
    """The event in a parsed JSON object, or a 422 `EventError` listing every field's problem."""
    given: dict[str, Any] = {}
    try:
        for key, value in data.items():
            check = EVENT_FIELDS.get(key)
            if check is not None:
                given[key] = value if check is _text and type(value) is str else check(value)
    except ValueError:
        raise _field_errors(data) from None
    return EventIn(given)


def _field_errors(data: dict[str, Any]) -> EventError:
    details = []
    for key, check in EVENT_FIELDS.items():
        if key in data:
            try:
                check(data[key])
            except ValueError as exc:
                details.append({"field": key, "reason": str(exc)})
    summary = "; ".join(f"{d['field']}: {d['reason']}" for d in details)
    return EventError(f"invalid event: {summary}", details=details)


def load_unusual(body: bytes, error: orjson.JSONDecodeError) -> Any:
    """What orjson refused but the original read: a body after a UTF-8 BOM (its `req.json()`
    ignored one, as RFC 8259 allows), deeper nesting than orjson's bound, and numbers beyond a
    double (refused by field, 422)."""
    if body.startswith(UTF8_BOM):
        body = body[len(UTF8_BOM) :]
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            error = exc
    try:
        return loads_refused(body, error)
    except ValueError as exc:
        raise EventError(f"invalid JSON: {exc}", status=400) from None


# ── the fast path ───────────────────────────────────────────────────────────────────────────────
# msgspec decodes and type-checks a body in C, into a struct whose fields are the op line's keys in
# their order. When every field has its own JSON type and its value passes the rules below, the
# defaults are set on the struct and msgspec writes the op line from it (absent fields omitted,
# nulls kept, strings escaped as orjson and JSON.stringify escape them). Anything else (a string
# for a number or a boolean, a value a rule refuses, an integer beyond 2^53, a BOM, invalid JSON)
# goes the way above, which decides and says why. Both ways give the same line: a property test
# holds them to it.

UNSET = msgspec.UNSET
Text = str | None | msgspec.UnsetType
Number = int | float | None | msgspec.UnsetType


class FastEvent(msgspec.Struct, gc=False):
    """An event as msgspec decodes it; once `ready`, the op (what the stats window reads).

    A field every op line holds is None when absent (absent and null get the same default); a field
    the line holds only when the client sent it is UNSET when absent. Only strings, numbers and
    booleans: no reference cycle is possible, so the garbage collector need not track it.
    """

    timestamp: str | None = None
    endpoint: str | None = None
    input_summary: str | None = None
    success: bool | None = None
    duration_ms: int | float | msgspec.Raw | None = None
    output_summary: str | None = None
    error: Text = UNSET
    source: str | None = None
    staffer_id: Text = UNSET
    sig_hash: Text = UNSET
    event_kind: Text = UNSET
    role: Text = UNSET
    city: Text = UNSET
    state: Text = UNSET
    count: Number = UNSET
    rescue_attempted: bool | None = None
    rescue_succeeded: bool | None = None
    event_id: Text = UNSET  # last, and unset before the line is written: not part of the op

    def get(self, key: str, default: Any = None) -> Any:
        """A field as `dict.get` reads a key: `default` when absent."""
        value = getattr(self, key, UNSET)
        return default if value is UNSET else value


class Ready(NamedTuple):
    """A valid event, ready for the spool: its id, its op (fields to count), its ops.jsonl line."""

    event_id: str | None
    op: FastEvent | dict[str, Any]
    line: bytes


_ready = tuple.__new__  # `_ready(Ready, (...))`: a NamedTuple without its Python-level __new__

#: What msgspec raises for a body it does not take: its own errors, and RecursionError for nesting
#: deeper than the interpreter's recursion limit (less the stack already in use) allows.
_NOT_DECODED = (msgspec.MsgspecError, RecursionError)
_decode_event = msgspec.json.Decoder(FastEvent).decode
_decode_events = msgspec.json.Decoder(list[FastEvent]).decode
_encoder = msgspec.json.Encoder()
_encode, _encode_lines = _encoder.encode, _encoder.encode_lines


def decode_events(body: bytes) -> list[FastEvent]:
    """A JSON array of events, each with its fields' JSON types; else DecodeFailed."""
    if not _utf8(body):
        raise DecodeFailed
    try:
        return _decode_events(body)
    except _NOT_DECODED:
        raise DecodeFailed from None


def ready_event(body: bytes, now: str | None = None) -> Ready:
    """One body (or NDJSON line) as a `Ready` event, or an `EventError` saying what is wrong."""
    if _utf8(body):
        try:
            event = _decode_event(body)
        except _NOT_DECODED:
            pass
        else:
            return ready_decoded(event, now)
    return ready_slowly(parse_event(body), now)


def _utf8(body: bytes) -> bool:
    """Whether the body is valid UTF-8 (msgspec skips unknown fields without looking: orjson, the
    slow way, refuses the whole body)."""
    if body.isascii():
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def ready_decoded(event: FastEvent, now: str | None = None) -> Ready:
    """An event msgspec decoded: the fast way when its values allow, else the checks above."""
    event_id = event.event_id
    if _defaults_applied(event, now):
        return _ready(Ready, (None if event_id is UNSET else event_id, event, _encode(event)))
    given = {
        key: _as_parsed(value)
        for key in EVENT_FIELDS
        if (value := getattr(event, key)) is not UNSET
    }
    return ready_slowly(validate_event(given), now)


def _as_parsed(value: object) -> object:
    """A value as the slow way's parser reads it: msgspec keeps an integer beyond a double whole,
    JSON.parse (and `observer.values.loads_beyond_double`) read it as ±Infinity."""
    if type(value) is int and not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
        try:
            float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value


def batch_item(item: FastEvent | bytes | Any, now: str) -> FastEvent | Ready | EventError:
    """One event of a batch (decoded, an NDJSON line, or a parsed JSON value), valid: the decoded
    event itself when it has no id (its line is written with the batch's others, `lines_of`), else
    a `Ready` event; invalid: the `EventError` saying what is wrong (returned: a batch goes on)."""
    try:
        if type(item) is FastEvent:
            event_id = item.event_id
            if (event_id is UNSET or event_id is None) and _defaults_applied(item, now):
                return item
            return ready_decoded(item, now)
        if type(item) is bytes:
            return ready_event(item, now)
        if type(item) is not dict:
            raise EventError(
                f"an event must be a JSON object, got {json_type_name(item)}", status=400
            )
        return ready_slowly(validate_event(item), now)
    except EventError as exc:
        return exc


def line_of(event: FastEvent) -> bytes:
    """A decoded event's ops.jsonl line, once its defaults are applied."""
    return _encode(event)


def lines_of(events: list[FastEvent]) -> bytes:
    """The lines of decoded events, each ending with a newline: one call for a batch."""
    return _encode_lines(events)


def ready_slowly(event: EventIn, now: str | None = None) -> Ready:
    fields = event.to_fields(now)
    return _ready(Ready, (event.event_id, fields, op_line(fields)))


def _defaults_applied(event: FastEvent, now: str | None) -> bool:
    """Apply the defaults (and unset the id: the line does not hold it); False, and the event
    untouched, when a value needs the field-by-field checks."""
    event_id, timestamp = event.event_id, event.timestamp
    count, duration = event.count, event.duration_ms
    if (
        event_id is not UNSET
        and event_id is not None
        and (not event_id or len(event_id) > MAX_EVENT_ID_LENGTH or _NOT_PRINTABLE.search(event_id))
    ):
        return False
    if timestamp is not None:
        try:
            datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        except ValueError:
            return False
    if count is not UNSET and count is not None:
        if type(count) is float:
            if not count.is_integer():
                return False
            count = int(count)
        if not 0 <= count <= MAX_EXACT_INT:
            return False
    if duration is not None and not 0 <= duration <= MAX_EXACT_INT:
        return False  # a negative, or beyond what a double holds exactly
    # Valid: the original's defaults, as `EventIn.to_fields` applies them.
    if event_id is not UNSET:
        event.event_id = UNSET
    if not timestamp:
        event.timestamp = now or now_timestamp()
    if event.endpoint is None:
        event.endpoint = "scenario:fill"
    if count is not UNSET:
        event.count = count
    if event.input_summary is None:
        event.input_summary = _default_summary(
            event.event_kind, event.role, count, event.city, event.state
        )
    success = event.success
    if success is None:
        event.success = success = False
    if duration is None:
        event.duration_ms = 0
    elif type(duration) is float:
        event.duration_ms = msgspec.Raw(js_number(duration).encode())
    if event.output_summary is None:
        error = event.error
        event.output_summary = (
            "filled" if success else "failed" if error is UNSET or error is None else error
        )
    if event.source is None:
        event.source = "scenario"
    if event.rescue_attempted is None:
        event.rescue_attempted = False
    if event.rescue_succeeded is None:
        event.rescue_succeeded = False
    return True
