"""How JSON values from clients and files are read and named: shared by the webhook's event
validation and the corrections tailer, so both accept and refuse the same things."""

from __future__ import annotations


def json_type_name(value: object) -> str:
    """How an error message names a JSON value's type ("an array", "null", …)."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
