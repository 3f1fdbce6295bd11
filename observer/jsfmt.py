"""How the original's JavaScript turned JSON values into text, for the strings clients still read.

Playbook entries and `observed()` output summaries are built from template strings, `Array.join`,
`JSON.stringify` and `toFixed(0)`. Python's defaults differ (`round(2.5)` is 2, `json.dumps`
writes `1.0` and keeps key order, `str(None)` is `None`), so the few rules that matter live here.
Only JSON-derived values occur (no functions, no undefined inside arrays).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

import orjson

from observer.ops import encode_value, js_number


class _Undefined:
    """JavaScript's `undefined`: a key the object does not have."""

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()
_MAX_INDEX = 2**32 - 2


def js_truthy(value: Any) -> bool:
    """`if (value)`: empty arrays and objects are truthy, 0, "", null and NaN are not."""
    if value is UNDEFINED or value is None or value is False:
        return False
    if isinstance(value, int | float):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


def js_string(value: Any) -> str:
    """`String(value)`, what a template string `${value}` writes."""
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return js_number(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ",".join(join_item(item) for item in value)
    return "[object Object]"


def join_item(value: Any) -> str:
    """An element as `Array.prototype.join` writes it: null and undefined become ""."""
    return "" if value is None or value is UNDEFINED else js_string(value)


def js_json(value: Any, limit: int | None = None) -> str:
    """`JSON.stringify(value)`, optionally only its first `limit` characters (built lazily, so a
    huge reply costs what the prefix costs)."""
    if limit is None:
        return "".join(_json_pieces(value))
    out: list[str] = []
    size = 0
    for piece in _json_pieces(value):
        out.append(piece)
        size += len(piece)
        if size >= limit:
            break
    return "".join(out)[:limit]


def _json_pieces(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        yield "{"
        for index, key in enumerate(_property_order(value)):
            yield ("," if index else "") + orjson.dumps(key).decode() + ":"
            yield from _json_pieces(value[key])
        yield "}"
    elif isinstance(value, list):
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ","
            yield from _json_pieces(item)
        yield "]"
    else:
        yield encode_value(value).decode()


def _property_order(obj: dict[str, Any]) -> list[str]:
    """Object key order in JavaScript: array-index keys first, ascending, then insertion order."""
    indices = [k for k in obj if _is_index(k)]
    if not indices:
        return list(obj)
    rest = [k for k in obj if not _is_index(k)]
    return sorted(indices, key=int) + rest


def _is_index(key: str) -> bool:
    return (
        key.isdigit() and key.isascii() and (key == "0" or key[0] != "0") and int(key) <= _MAX_INDEX
    )


def to_fixed_0(value: float) -> str:
    """`Number.prototype.toFixed(0)`: the exact binary value rounded half away from zero.

    `round()` and `f"{x:.0f}"` round half to even (2.5 → "2"); JavaScript writes "3". Rounding the
    double's exact decimal expansion gives what JavaScript gives, also for values such as
    2.4999999999999996 that only print like a half.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if abs(value) >= 1e21:
        return js_number(value)
    if value == 0:
        return "0"
    return str(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP))
