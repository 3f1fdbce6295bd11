"""How JSON values from clients and files are read and named: shared by the webhook's event
validation and the corrections tailer, so both accept and refuse the same things.

Numbers are read as the original held them: every JSON number a JavaScript double. The original
parsed bodies and corrections rows with `JSON.parse`, so each number it stored is the double
nearest to what was sent, and `JSON.stringify` wrote that double back: 2^53 + 1 became
9007199254740992, `12345678901234567890` became `12345678901234567000`. Observer keeps integers
exact in memory and writes them as that double (`observer.ops.js_number`); what no double can hold
(`1e400`, whose double is Infinity) is refused here, by field, before anything is accepted.

Numbers sent as strings are taken only in JSON's own number form, the text that would have been a
number without its quotes (`"42"`, `"-3.5"`, `"1e3"`): no spaces, underscores, `+`, leading zeros,
`Infinity`, `NaN` or non-ASCII digits, all of which Python's `int()` and `float()` would accept.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any


def json_type_name(value: object) -> str:
    """How an error message names a JSON value's type ("an array", "null", …)."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


#: Integers up to this magnitude are exact doubles; beyond it a number is written as its double.
MAX_EXACT_INT = 2**53

#: A JSON number, exactly (RFC 8259 section 6); [0-9] because \d also matches non-ASCII digits.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")

#: Longer integers than this are beyond any double (1.8e308 has 309 digits); Python's int() also
#: refuses more than 4300 digits, so they never reach it.
_MAX_INT_DIGITS = 310

BEYOND_DOUBLE = "is beyond the range of a JSON number (a double, about ±1.8e308)"


def number_from_text(text: str) -> int | float:
    """The number a string holds in JSON's number form, or ValueError saying why not."""
    if _JSON_NUMBER.fullmatch(text) is None:
        raise ValueError(f"must be a number, got {text[:40]!r}")
    if "." in text or "e" in text or "E" in text:
        return finite(float(text))
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(BEYOND_DOUBLE)
    return double_range(int(text))


def double_range(value: int) -> int:
    """`value` if a double can hold it (as a nearby value), else ValueError."""
    if -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
        return value
    try:
        float(value)
    except OverflowError:
        raise ValueError(BEYOND_DOUBLE) from None
    return value


def finite(value: float) -> float:
    """`value` unless it is Infinity or NaN: what `1e400` parses to, which no double holds."""
    if not math.isfinite(value):
        raise ValueError(BEYOND_DOUBLE)
    return value


def loads_beyond_double(body: bytes) -> Any:
    """Parse JSON that orjson refused only because a number overflows a double.

    orjson stops at such a number, so the field it sits in is unknown; Python's parser reads it as
    Infinity, and validation then names the field. Everything orjson refuses besides (invalid
    UTF-8, lone surrogates, `NaN`, deep nesting) is refused here too, with ValueError.
    """
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_int=_json_int)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    _refuse_lone_surrogates(value)
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json_int(text: str) -> int | float:
    # As JSON.parse reads it: an integer beyond a double is Infinity here, refused by its field.
    infinity = -math.inf if text.startswith("-") else math.inf
    if len(text) > _MAX_INT_DIGITS:
        return infinity
    value = int(text)
    try:
        float(value)
    except OverflowError:
        return infinity
    return value


def _refuse_lone_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("lone surrogate in a string") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
