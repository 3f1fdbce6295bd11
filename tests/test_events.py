"""The op line and the /event body: byte-compatible with the original, strict where it was lax."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from observer.errors import EventError
from observer.ops import Op, js_number, now_timestamp, op_line
from observer.values import number_from_text
from observer.webhook.events import parse_event
from observer.webhook.window import StatsWindow

GOLDEN = Path(__file__).parent / "golden"


def golden_pairs(
    bodies_name: str = "event_bodies.jsonl", lines_name: str = "original_ops.jsonl"
) -> list[tuple[bytes, bytes]]:
    bodies = (GOLDEN / bodies_name).read_bytes().splitlines()
    lines = (GOLDEN / lines_name).read_bytes().splitlines()
    assert len(bodies) == len(lines) > 10
    return list(zip(bodies, lines, strict=True))


def odd_golden_pairs() -> list[tuple[bytes, bytes]]:
    return golden_pairs("odd_bodies.jsonl", "original_odd_ops.jsonl")


@pytest.mark.parametrize(("body", "original_line"), golden_pairs())
def test_op_line_is_byte_identical_to_the_original(body: bytes, original_line: bytes) -> None:
    fields = parse_event(body).to_fields()
    assert op_line(fields) == Op(**fields).to_line() == original_line


@pytest.mark.parametrize(("body", "original_line"), odd_golden_pairs())
def test_big_numbers_and_a_bom_give_the_original_bytes(body: bytes, original_line: bytes) -> None:
    fields = parse_event(body).to_fields()
    assert op_line(fields) == Op(**fields).to_line() == original_line


def test_stats_window_matches_the_original_on_the_same_events() -> None:
    window = StatsWindow()
    for body, _ in golden_pairs():
        window.add_fields(parse_event(body).to_fields())
    assert window.stats() == json.loads((GOLDEN / "original_stats.json").read_text())


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (42, "42"),
        (42.0, "42"),
        (-3.5, "-3.5"),
        (0.1, "0.1"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (1e21, "1e+21"),
        (1.5e22, "1.5e+22"),
        (123456789012345680000.0, "123456789012345680000"),
        (1 / 3, "0.3333333333333333"),
        (5e-324, "5e-324"),
        (2**53, "9007199254740992"),
        (2**53 + 1, "9007199254740992"),
        (-(2**53) - 1, "-9007199254740992"),
        (12345678901234567890, "12345678901234567000"),
        (2**64, "18446744073709552000"),
        (10**21, "1e+21"),
        (10**400, "null"),
    ],
)
def test_numbers_are_printed_as_javascript_prints_them(value: float, text: str) -> None:
    assert js_number(value) == text


def test_default_timestamp_is_iso_utc_with_milliseconds() -> None:
    stamp = now_timestamp()
    assert len(stamp) == 24 and stamp.endswith("Z") and stamp[19] == "."


def test_obviously_equal_forms_are_coerced() -> None:
    op = Op(**parse_event(b'{"success":"false","duration_ms":"42","count":"3"}').to_fields())
    assert (op.success, op.duration_ms, op.count) == (False, 42, 3)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{", 400, "invalid JSON"),
        (b"", 400, "invalid JSON"),
        (b"null", 400, "got null"),
        (b"[1,2]", 400, "got an array"),
        (b'"event"', 400, "got a string"),
        (b"42", 400, "got a number"),
        (b'{"success":"maybe"}', 422, "success: must be a boolean"),
        (b'{"duration_ms":"abc"}', 422, "duration_ms: must be a number"),
        (b'{"duration_ms":true}', 422, "duration_ms: must be a number"),
        (b'{"duration_ms":-1}', 422, "duration_ms: must not be negative"),
        (b'{"count":1.5}', 422, "count: must be a whole number"),
        (b'{"endpoint":"__proto__","source":5}', 422, "source: must be a string"),
        (b'{"role":{"toString":1}}', 422, "role: must be a string"),
        (b'{"timestamp":"yesterday"}', 422, "timestamp: is not an ISO-8601"),
        (b'{"event_id":"a\\tb"}', 422, "event_id: must not contain tabs"),
        (b'{"event_id":""}', 422, "event_id"),
        (b'{"count":1e400}', 422, "count: is beyond the range of a JSON number"),
        (b'{"duration_ms":-1e400}', 422, "duration_ms: is beyond the range"),
        (b'{"count":1' + b"0" * 400 + b"}", 422, "count: is beyond the range"),
        (b'{"count":"1' + b"0" * 400 + b'"}', 422, "count: is beyond the range"),
        (b'{"duration_ms":"2e308"}', 422, "duration_ms: is beyond the range"),
        (b'{"count":1e400,"x":NaN}', 400, "invalid JSON"),
        (b'{"count":1e400,"x":"\xff"}', 400, "invalid JSON"),
        (b"\xef\xbb\xbf\xef\xbb\xbf{}", 400, "invalid JSON"),
        (b"\xef\xbb\xbf[]", 400, "got an array"),
    ],
)
def test_bad_bodies_say_what_and_where(body: bytes, status: int, words: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(body)
    assert caught.value.status == status
    assert words in str(caught.value)


def test_field_errors_list_every_field_path() -> None:
    with pytest.raises(EventError) as caught:
        parse_event(b'{"success":1,"count":"x"}')
    fields = {detail["field"] for detail in caught.value.details}
    assert fields == {"success", "count"}


def test_absent_null_and_present_keys_are_kept_apart() -> None:
    absent = Op(
        timestamp="t",
        endpoint="e",
        input_summary="i",
        success=True,
        duration_ms=1,
        output_summary="o",
    )
    explicit = Op(**absent.model_dump(exclude_unset=True), error=None)
    assert b'"error"' not in absent.to_line()
    assert b'"error":null' in explicit.to_line()


@pytest.mark.parametrize(
    ("text", "value"),
    [("42", 42), ("-3.5", -3.5), ("0", 0), ("1e3", 1000.0), ("-0.0", 0.0), ("2.5E-3", 0.0025)],
)
def test_numbers_in_strings_are_taken_in_json_number_form(text: str, value: float) -> None:
    number = number_from_text(text)
    assert number == value and type(number) is type(value)
    if value >= 0:
        assert parse_event(orjson.dumps({"duration_ms": text})).duration_ms == value


@pytest.mark.parametrize(
    "text",
    ["1_000", " 42 ", "42 ", "+5", "042", ".5", "5.", "Infinity", "NaN", "0x10", "١٢", "", "1e"],
)
def test_other_number_strings_are_refused(text: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(orjson.dumps({"count": text, "duration_ms": text}))
    assert {d["field"] for d in caught.value.details} == {"count", "duration_ms"}


@pytest.mark.parametrize("char", ["\x00", "\x1f", "\x7f", "\x85", "\x9f", "\u2028", "\u2029", "\n"])
def test_event_ids_hold_printable_characters_only(char: str) -> None:
    with pytest.raises(EventError, match="event_id: must not contain"):
        parse_event(orjson.dumps({"event_id": f"id{char}x"}))


def test_printable_event_ids_are_kept() -> None:
    for event_id in ("é 🚀 日本", "a b", "\xa0nbsp", "x" * 200):
        assert parse_event(orjson.dumps({"event_id": event_id})).event_id == event_id


def test_a_number_beyond_a_double_outside_the_fields_is_dropped_like_any_unknown_field() -> None:
    event = parse_event(b'{"extra":[1e400],"count":12345678901234567890,"success":true}')
    assert b'"count":12345678901234567000' in op_line(event.to_fields())
