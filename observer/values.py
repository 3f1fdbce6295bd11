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

Nesting is not bounded either: `JSON.parse` read the original's bodies at any depth (measured at 20
million levels), where orjson stops at 1,024 and msgspec and Python's parser at the interpreter's
recursion limit. `loads_refused` reads what orjson refused for its depth alone in layers it can
parse (`loads_nested`).
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

import orjson


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


def loads_refused(body: bytes, error: orjson.JSONDecodeError) -> Any:
    """What orjson refused but `JSON.parse` reads: nesting deeper than orjson's bound, and numbers
    beyond a double (read as ±Infinity, refused by field); else ValueError with orjson's reason."""
    reason = str(error)
    if reason.startswith(_DEPTH_REFUSED):
        return loads_nested(body)
    if reason.startswith(_INFINITY_REFUSED):
        return loads_beyond_double(body)
    raise ValueError(reason)


def loads_beyond_double(body: bytes) -> Any:
    """Parse JSON that orjson refused only because a number overflows a double.

    orjson stops at such a number, so the field it sits in is unknown; Python's parser reads it as
    Infinity, and validation then names the field. Everything orjson refuses besides (invalid
    UTF-8, lone surrogates, `NaN`) is refused here too, with ValueError; a body nested deeper than
    Python's parser goes is read in layers (`loads_nested`).
    """
    try:
        return _python_loads(body)
    except RecursionError:
        return loads_nested(body)


def _python_loads(body: bytes) -> Any:
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    value = json.loads(text, parse_constant=_refuse_constant, parse_int=_json_int)
    _refuse_lone_surrogates(value)
    return value


# ── any depth ───────────────────────────────────────────────────────────────────────────────────
# orjson parses a layer of at most LAYER_DEPTH levels; each array or object that starts a deeper
# layer is validated as a document of its own and stands in its parent as an empty one (` [] `,
# ` {} `: a value on its own, whatever is next to it). Every byte is parsed once, by orjson; Python
# walks runs of opening or closing brackets (with what lies between them), a run at a time, and
# finds the brackets where layers start and end with a regular expression.

#: Levels orjson parses at a time: within its bound (1,024) and Python's (for `1e400`), with room.
LAYER_DEPTH = 256
_DEPTH_REFUSED = "depth limit exceeded"
_INFINITY_REFUSED = "number is infinity"
_STRING = rb'"(?:[^"\\]++|\\.)*+"'
_BETWEEN = rb'(?:[^"\[\]{}]++|' + _STRING + rb")*+"  # what lies between two brackets
#: What lies before the next bracket, then a run of opening brackets or of closing ones (with what
#: lies between them), or the end: an unterminated string, or the end of the body.
_RUNS = re.compile(
    _BETWEEN
    + rb"(?:(?P<open>(?:[\[{]++"
    + _BETWEEN
    + rb")++)|(?P<close>(?:[\]}]++"
    + _BETWEEN
    + rb')++)|(?P<end>"|\Z))',
    re.DOTALL,
)
_STRINGS = re.compile(_STRING, re.DOTALL)


@functools.cache
def _skip(brackets: int) -> re.Pattern[bytes]:
    """Matches `brackets` brackets with what follows each: its end is where the next one is."""
    return re.compile(rb"(?:[\[\]{}]" + _BETWEEN + rb"){%d}" % brackets, re.DOTALL)


class _Run:
    """A run of opening or of closing brackets, and where its n-th bracket is."""

    __slots__ = ("count", "pure", "start")

    def __init__(self, match: re.Match[bytes], kind: str) -> None:
        text, self.start = match.group(kind), match.start(kind)
        brackets = b"[{" if kind == "open" else b"]}"
        self.pure = not text.strip(brackets)  # brackets alone: the n-th is n bytes on
        if not self.pure and b'"' in text:
            text = _STRINGS.sub(b"", text)
        self.count = len(text) if self.pure else text.count(brackets[:1]) + text.count(brackets[1:])

    def after(self, body: bytes, at: int, brackets: int) -> int:
        """Where the bracket `brackets` on from the one at `at` is."""
        return at + brackets if self.pure else _skip(brackets).match(body, at).end()


def loads_nested(body: bytes) -> Any:
    """JSON nested to any depth, as orjson reads it (the same values, the same refusals), but for
    the arrays and objects deeper than LAYER_DEPTH levels, which are validated and read as empty.

    What a value that deep holds is never kept: an op's fields are strings, numbers and booleans,
    and a field that holds an array or an object is refused whatever it holds.
    """
    depth = 0
    layers = [_Layer(0, 0)]  # the body, then each deeper layer still open
    for match in _RUNS.finditer(body):
        kind = match.lastgroup
        if kind == "open":
            run = _Run(match, kind)
            level = (
                (max(depth, 1) - 1) // LAYER_DEPTH + 1
            ) * LAYER_DEPTH + 1  # the next layer's first level
            at, opens = run.start, depth + 1  # the bracket at `at` opens level `opens`
            while level <= depth + run.count:
                at = run.after(body, at, level - opens)
                opens = level
                layers.append(_Layer(at, level))
                level += LAYER_DEPTH
            depth += run.count
        elif kind == "close":
            run = _Run(match, kind)
            if run.count > depth:
                at = run.after(body, run.start, depth)
                raise ValueError(f"unmatched {chr(body[at])!r} at byte {at}")
            at, closes = run.start, depth  # the bracket at `at` closes level `closes`
            while layers[-1].depth > depth - run.count:
                layer = layers.pop()
                at = run.after(body, at, closes - layer.depth)
                closes = layer.depth
                layer.parse(body, at + 1)
                layers[-1].children.append((layer.start, at + 1))
            depth -= run.count
        elif kind == "end":
            if match.group(kind):
                raise ValueError(f"unterminated string at byte {match.start(kind)}")
            break
    if len(layers) > 1:
        raise ValueError(f"unexpected end of data: the value at byte {layers[-1].start} is open")
    return layers[0].parse(body, len(body))


class _Layer:
    """An array or object parsed on its own: where it starts, its depth, the deeper ones in it."""

    __slots__ = ("children", "depth", "start")

    def __init__(self, start: int, depth: int) -> None:
        self.start = start
        self.depth = depth
        self.children: list[tuple[int, int]] = []

    def parse(self, body: bytes, end: int) -> Any:
        """Its value, the deeper layers in it read as empty; ValueError if it is not JSON."""
        pieces, at = [], self.start
        for start, stop in self.children:
            pieces += (body[at:start], b" [] " if body[start] == 0x5B else b" {} ")
            at = stop
        pieces.append(body[at:end])
        text = b"".join(pieces)
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if not str(exc).startswith(_INFINITY_REFUSED):
                where = f" (in the value nested {self.depth} deep at byte {self.start})"
                raise ValueError(f"{exc}{where if self.depth else ''}") from None
        try:
            return _python_loads(text)
        except RecursionError:
            raise ValueError("nested too deeply") from None


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
