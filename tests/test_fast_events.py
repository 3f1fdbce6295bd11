"""The webhook's fast way to an op line (msgspec) against the field-by-field checks: for every body,
the same answer and the same bytes."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from observer.errors import EventError
from observer.intake.spool import encode_records, records_without_ids
from observer.ops import op_line
from observer.webhook.events import (
    FastEvent,
    Ready,
    batch_item,
    decode_events,
    line_of,
    lines_of,
    parse_event,
    ready_event,
)
from tests.bodies import Body, bodies

NOW = "2026-04-23T10:00:00.000Z"
PROPERTY = hypothesis_settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def slow(raw: bytes) -> tuple[Any, ...]:
    try:
        event = parse_event(raw)
    except EventError as exc:
        return ("refused", exc.status, exc.to_json())
    return ("ready", event.event_id, op_line(event.to_fields(NOW)))


def fast(raw: bytes) -> tuple[Any, ...]:
    try:
        ready = ready_event(raw, NOW)
    except EventError as exc:
        return ("refused", exc.status, exc.to_json())
    return ("ready", ready.event_id, ready.line)


@PROPERTY
@given(body=bodies())
def test_every_body_gets_the_same_answer_and_line_both_ways(body: Body) -> None:
    assert fast(body.raw) == slow(body.raw)


@hypothesis_settings(PROPERTY, max_examples=500)  # each example is up to five bodies
@given(events=st.lists(bodies(), max_size=5))
def test_a_batch_decoded_at_once_gives_each_event_its_line(events: list[Body]) -> None:
    array = b"[" + b",".join(body.raw for body in events) + b"]"
    try:
        decoded = decode_events(array)
    except ValueError:
        return  # not every event has its fields' JSON types: each goes its own way
    if len(decoded) != len(events):
        return  # an empty body is no array item
    written: list[FastEvent] = []  # the events whose lines the batch writes together
    for item, body in zip(decoded, events, strict=True):
        outcome = batch_item(item, NOW)
        if type(outcome) is FastEvent:
            assert ("ready", None, line_of(outcome)) == slow(body.raw)
            written.append(outcome)
        elif type(outcome) is Ready:
            assert ("ready", outcome.event_id, outcome.line) == slow(body.raw)
        else:
            assert isinstance(outcome, EventError)
            assert ("refused", outcome.status, outcome.to_json()) == slow(body.raw)
    lines = [line_of(event) for event in written]
    assert lines_of(written) == b"".join(line + b"\n" for line in lines)
    assert records_without_ids(lines_of(written)) == encode_records([None] * len(lines), lines)


def test_the_usual_body_goes_the_fast_way() -> None:
    body = orjson.dumps({"event_kind": "fill", "count": 2.0, "duration_ms": 1.5, "success": True})
    ready = ready_event(body, NOW)
    assert type(ready.op) is not dict  # the decoded struct, not the slow way's fields
    assert ready.line == op_line(parse_event(body).to_fields(NOW))
    assert b'"input_summary":"fill ?\xc3\x972 in ?, ?"' in ready.line
    assert b'"duration_ms":1.5,' in ready.line and b'"count":2,' in ready.line
