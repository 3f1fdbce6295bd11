"""The op: one observed operation outcome, and its line in ops.jsonl.

This module owns the line format. Existing readers of ops.jsonl rely on the original's bytes: keys in
a fixed order, a key omitted when absent, an explicit null kept, compact separators, raw UTF-8 and
numbers printed the way JavaScript prints them. `Op.to_line()` produces exactly that.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from observer.values import MAX_EXACT_INT

#: Key order of a line; the first 17 are the webhook's, the last three the overseer corrections'.
OP_KEYS: tuple[str, ...] = (
    "timestamp",
    "endpoint",
    "input_summary",
    "success",
    "duration_ms",
    "output_summary",
    "error",
    "source",
    "staffer_id",
    "sig_hash",
    "event_kind",
    "role",
    "city",
    "state",
    "count",
    "rescue_attempted",
    "rescue_succeeded",
    "task_class",
    "correction",
    "applied_at_turn",
)

Number = int | float


class Op(BaseModel):
    """An op as stored. Which optional keys are present is `model_fields_set`: absent is not null,
    so pass None only for an explicit null."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    timestamp: str
    endpoint: str
    input_summary: str
    success: bool
    duration_ms: Number
    output_summary: str
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
    task_class: str | None = None
    correction: str | None = None
    applied_at_turn: Number | None = None

    def fields(self) -> dict[str, Any]:
        """The present keys and their values (an explicit null included)."""
        return {key: getattr(self, key) for key in self.model_fields_set}

    def to_line(self) -> bytes:
        """The op's ops.jsonl line without its newline, byte-compatible with the original."""
        return op_line(self.fields())


def op_line(fields: dict[str, Any]) -> bytes:
    """The ops.jsonl line of already-validated op fields: keys in the original's order.

    The webhook's hot path calls this directly, without building an `Op` (pydantic's construction
    costs more than the whole line). orjson writes strings, booleans and ints up to 2^53 as
    JSON.stringify does; floats differ (100.0, 1e-07) and larger ints were doubles in the original
    (2^53 + 1 was written 9007199254740992), so those go in pre-formatted. Fields that already come
    in key order without a float (what `EventIn.to_fields` gives) are written as they are; orjson
    refuses an int beyond 2^53 there, which sends the rare big one down the second path.
    """
    if _in_key_order(tuple(fields)) and float not in map(type, fields.values()):
        try:
            return orjson.dumps(fields, option=orjson.OPT_STRICT_INTEGER)
        except TypeError:
            pass  # an int beyond 2^53
    ordered: dict[str, Any] = {}
    for key in OP_KEYS:
        if key in fields:
            value = fields[key]
            kind = type(value)
            ordered[key] = orjson.Fragment(js_number(value)) if kind in _NUMBERS else value
    return orjson.dumps(ordered)


_NUMBERS = (int, float)  # exact types: a bool is written by orjson


_KEY_RANK = {key: rank for rank, key in enumerate(OP_KEYS)}
_ORDER_MEMO: dict[tuple[str, ...], bool] = {}  # a few key sets recur: ask once for each


def _in_key_order(keys: tuple[str, ...]) -> bool:
    known = _ORDER_MEMO.get(keys)
    if known is None:
        ranks = [_KEY_RANK.get(key, -1) for key in keys]
        known = -1 not in ranks and ranks == sorted(ranks)
        if len(_ORDER_MEMO) >= 4096:
            _ORDER_MEMO.clear()
        _ORDER_MEMO[keys] = known
    return known


def encode_value(value: object) -> bytes:
    """One JSON value as JavaScript's JSON.stringify writes it."""
    if value is None:
        return b"null"
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    if isinstance(value, int | float):
        return js_number(value).encode()
    return orjson.dumps(value)


def js_number(value: Number) -> str:
    """Format a number as ECMAScript's Number::toString does (JSON.stringify's number form).

    An int is first the double JavaScript would hold: beyond 2^53 that is the nearest one.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            return str(value)
        try:
            value = float(value)
        except OverflowError:
            return "null"  # Infinity, as JSON.stringify writes it; validation refuses these
    number = float(value)
    if not math.isfinite(number):
        return "null"  # what JSON.stringify writes for NaN and Infinity
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    mantissa, _, exponent = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # n: position of the decimal point relative to the first significant digit (ECMA-262 7.1.12.1).
    point = len(whole) + (int(exponent) if exponent else 0)
    if whole == "0":
        point -= len(fraction) - len(fraction.lstrip("0")) + 1
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= point <= 21:
        text = digits + "0" * (point - k)
    elif 0 < point <= 21:
        text = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        text = "0." + "0" * (-point) + digits
    else:
        exp = point - 1
        exp_text = f"e{'+' if exp >= 0 else '-'}{abs(exp)}"
        text = (digits[0] + ("." + digits[1:] if k > 1 else "")) + exp_text
    return sign + text


def now_timestamp() -> str:
    """Now as ISO-8601 UTC with milliseconds and `Z`, like JavaScript's `toISOString()`."""
    global _cached_second, _cached_text
    now = time.time()
    second = int(now)
    if second != _cached_second:  # the date part changes once a second: format it once
        _cached_second = second
        _cached_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return _cached_text + _MILLISECONDS[int((now - second) * 1000)]


_cached_second = -1
_cached_text = ""
_MILLISECONDS = [f".{ms:03d}Z" for ms in range(1000)]  # the rest of the text, by millisecond


def cut(text: str, limit: int) -> str:
    """The first `limit` characters of `text`, never splitting a character (the original cut UTF-16)."""
    return text[:limit]
