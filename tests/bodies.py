"""Generated `POST /event` bodies, hostile and ordinary, and what the webhook must do with each.

A body is built from JSON text fragments rather than from Python values, so that it can hold what
a client may send but `json.dumps` never writes: numbers beyond a double (`1e400`), beyond 64 bits,
`-0`, lone surrogates, control characters in escapes, duplicate keys, a byte order mark, invalid
UTF-8, a truncated document, nesting far deeper than any parser's recursion (the original read 20
million levels). `check_answer` is the property: every answer is a 2xx or 4xx with a
JSON body; an accepted event is in the spool exactly as the line writer writes it, with every
number as JavaScript's `JSON.stringify` writes the double the original would have held.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson
from hypothesis import event
from hypothesis import strategies as st

from observer.ops import js_number, op_line
from observer.webhook.events import parse_event

FIELDS = (
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
    "event_id",
)
ODD_NUMBERS = (
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "-0.0",
    "1e21",
    "1E+21",
    "0.5e1",
    "9007199254740993",
    "12345678901234567890",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "1.7976931348623157e308",
    "1" + "0" * 400,
    "5e-324",
)
ODD_STRINGS = (
    '"42"',
    '"-3.5"',
    '"1e3"',
    '"1_000"',
    '" 42 "',
    '"+5"',
    '"Infinity"',
    '"99999999999999999999"',
    '"true"',
    '" FALSE "',
    '"2026-04-23T10:00:00.123Z"',
    '"yesterday"',
    '"\\ud800"',
    '"\\u2028\\u0085"',
    '"a\\u0000b"',
    '"\\t"',
    '""',
    '"__proto__"',
)


@dataclass(frozen=True)
class Member:
    key: str
    text: str  # the value's JSON text
    number: bool  # the value is a JSON number literal


def _number_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.integers(min_value=0, max_value=10_000).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(ODD_NUMBERS),
    )


def _string_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=20).map(lambda s: json.dumps(s, ensure_ascii=False)),
        st.text(max_size=8).map(json.dumps),
        st.sampled_from(ODD_STRINGS),
        st.sampled_from(("id-1", "id-2", "id-3")).map(json.dumps),  # event ids that repeat
    )


_SCALAR = st.one_of(st.sampled_from(("null", "true", "false")), _number_text(), _string_text())
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]"),
        st.dictionaries(st.text(max_size=5), inner, max_size=3).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=6,
)


#: Nesting around the bounds of the parsers under the webhook (msgspec and Python's near the
#: interpreter's recursion limit, orjson at 1,024, the webhook's layers of 256) and far beyond.
DEPTHS = (2, 255, 256, 257, 258, 513, 986, 987, 1000, 1023, 1024, 1025, 5000, 100_000)


@st.composite
def deep_values(draw: st.DrawFn) -> str:
    """An array or object nested `DEPTHS` deep (or any depth up to 20,000): brackets alone, keys,
    both in turn, or with whitespace; around a leaf that may itself hold brackets or `1e400`."""
    depth = draw(st.one_of(st.sampled_from(DEPTHS), st.integers(min_value=1, max_value=20_000)))
    leaf = draw(st.sampled_from(("", "1", '"]}[{"', "null", "1e400", "[]", "{}")))
    shape = draw(st.sampled_from(("arrays", "objects", "both", "spaced")))
    if shape == "arrays":
        return "[" * depth + leaf + "]" * depth
    if shape == "spaced":
        return "[ " * depth + leaf + " ]\n" * depth
    if shape == "objects":
        return '{"a":' * depth + (leaf or "1") + "}" * depth
    pairs = (depth + 1) // 2
    return '[{"k]":' * pairs + (leaf or "1") + "}]" * pairs


_NON_NEGATIVE = st.one_of(
    st.integers(min_value=0, max_value=2**70).map(str),
    st.floats(min_value=0, allow_infinity=False).map(repr),
    st.sampled_from([n for n in ODD_NUMBERS if not n.startswith("-")]),
)
_FITTING: dict[str, st.SearchStrategy[str]] = {
    "count": st.one_of(_NON_NEGATIVE, st.sampled_from(("5.0", "1e20", "0", '"42"', "2e15"))),
    "duration_ms": _NON_NEGATIVE,
    "success": st.sampled_from(("true", "false", '"true"', '"false"', "null")),
    "rescue_attempted": st.sampled_from(("true", "false", "null")),
    "rescue_succeeded": st.sampled_from(("true", "false", "null")),
    "timestamp": st.sampled_from(('"2026-04-23T10:00:00.123Z"', '"2026-04-23T10:00:00+02:00"')),
    "event_id": st.sampled_from(("id-1", "id-2", "id-3", "é🚀")).map(json.dumps),
}


_NUMBER_FIELDS = ("count", "duration_ms")  # drawn more often: their writing is the hard part


@st.composite
def _member(draw: st.DrawFn) -> Member:
    """Usually a value that fits the field (so that bodies get through), sometimes anything."""
    key = draw(st.sampled_from((*FIELDS, *_NUMBER_FIELDS * 3, "unknown", "")))
    if draw(st.integers(min_value=0, max_value=3)):
        fitting = _FITTING.get(key, _string_text())
        text = draw(fitting)
        return Member(key, text, _is_number(text))
    kind = draw(st.sampled_from(("number", "string", "scalar", "any", "deep")))
    if kind == "number":
        return Member(key, draw(_number_text()), True)
    values = {"string": _string_text(), "scalar": _SCALAR, "any": _VALUE, "deep": deep_values()}
    text = draw(values[kind])
    return Member(key, text, _is_number(text))


def _is_number(text: str) -> bool:
    return text[:1].isdigit() or text[:1] == "-"


@dataclass(frozen=True)
class Body:
    raw: bytes
    members: tuple[Member, ...]  # empty unless the body is an object built from members

    def last(self, key: str) -> Member | None:
        """The member a JSON parser keeps for `key` (the last one)."""
        found = [m for m in self.members if m.key == key]
        return found[-1] if found else None


@st.composite
def bodies(draw: st.DrawFn) -> Body:
    """Mostly objects of event fields with ordinary and odd values; sometimes damaged or not JSON."""
    members = tuple(draw(st.lists(_member(), max_size=6)))
    text = "{" + ",".join(f"{json.dumps(m.key)}:{m.text}" for m in members) + "}"
    raw = text.encode("utf-8", errors="surrogatepass")
    damage = draw(
        st.sampled_from(
            ("none",) * 6 + ("bom", "truncate", "bytes", "top", "pad", "bad_utf8", "deep_top")
        )
    )
    if damage == "none":
        return Body(raw, members)
    if damage == "bom":
        return Body(b"\xef\xbb\xbf" + raw, members)
    if damage == "pad":
        return Body(b" \n\t" + raw + b"\r\n", members)
    if damage == "truncate":
        return Body(raw[: draw(st.integers(min_value=0, max_value=max(0, len(raw) - 1)))], ())
    if damage == "bytes":
        return Body(draw(st.binary(max_size=40)), ())
    if damage == "bad_utf8":
        cut = draw(st.integers(min_value=0, max_value=len(raw)))
        return Body(raw[:cut] + b"\xff\xc3" + raw[cut:], ())
    if damage == "deep_top":  # a deep array as the body, whole or cut short
        deep = draw(deep_values()).encode()
        return Body(deep[: draw(st.sampled_from((len(deep), len(deep) - 1, len(deep) // 2)))], ())
    return Body(draw(_VALUE).encode("utf-8", errors="surrogatepass"), ())


def check_answer(
    body: Body, status: int, content_type: str, content: bytes, new: list[bytes]
) -> None:
    """The property, for one body: the answer, and the spool records it added (`new`)."""
    event(f"status {status}")
    assert 200 <= status < 300 or 400 <= status < 500, (status, content)
    assert content_type == "application/json", content_type
    answer = orjson.loads(content)
    assert isinstance(answer, dict)
    if status >= 400:
        assert isinstance(answer["error"], str) and answer["error"], answer
        assert new == [], "a refused body wrote something"
        if status == 422:
            assert {d["field"] for d in answer["details"]} <= set(FIELDS), answer
        return
    assert status == 200 and answer["accepted"] is True, answer
    if answer.get("duplicate"):
        assert new == [], "a duplicate was stored again"
        return
    assert len(new) == 1, new
    event_id, _, line = new[0].partition(b"\t")
    parsed = parse_event(body.raw)
    assert event_id.decode() == (parsed.event_id or "")
    fields = parsed.to_fields()
    if parsed.timestamp is None:  # the webhook's clock: take its value, check its form
        stamp = orjson.loads(line)["timestamp"]
        assert len(stamp) == 24 and stamp.endswith("Z"), stamp
        fields["timestamp"] = stamp
    assert line == op_line(fields)
    _check_numbers(body, line)


def _check_numbers(body: Body, line: bytes) -> None:
    """Numbers sent as JSON numbers are written as JSON.stringify writes their double, in the
    field and in the default summary (both fields are always followed by another key)."""
    for key in ("count", "duration_ms"):
        member = body.last(key)
        if member is None or not member.number:
            continue
        expected = js_number(float(member.text)).encode()
        event(f"{key} number checked")
        assert b'"%s":%s,' % (key.encode(), expected) in line, (key, member.text, line)
        summary = body.last("input_summary")
        if key == "count" and (summary is None or summary.text == "null"):
            assert "×".encode() + expected + b" in " in line, (member.text, line)
