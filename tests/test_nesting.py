"""Bodies nested at any depth: read as the original's `JSON.parse` read them (measured: 20 million
levels), on every path of the real webhook (the direct one, the ASGI one for a query string or a
chunked body, `/events` as an array and as NDJSON), never a closed connection or a 500."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from observer.settings import Settings
from observer.values import LAYER_DEPTH, loads_nested
from tests.bodies import deep_values
from tests.fakes import WebhookProcess, spool_records

PROPERTY = hypothesis_settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
#: Nearly the deepest body within the default 1 MiB body limit (room left for an event's fields).
DEEPEST = (1024 * 1024 - 200) // 2


def _with_a_large_stack(parse: Callable[[], Any]) -> Any:
    """Python's own parser, recursing as deep as the document goes: the reference for validity."""
    outcome: list[Any] = []
    limit = sys.getrecursionlimit()
    size = threading.stack_size(512 * 1024 * 1024)

    def run() -> None:
        try:
            outcome.append(("value", parse()))
        except ValueError as exc:
            outcome.append(("refused", exc))

    sys.setrecursionlimit(200_000)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        sys.setrecursionlimit(limit)
        threading.stack_size(size)
    return outcome[0]


def _shape(value: Any, depth: int) -> Any:
    """A value's first `depth` levels (what the layer that holds them reads)."""
    if depth == 0:
        return type(value).__name__
    if isinstance(value, list):
        return [_shape(item, depth - 1) for item in value]
    if isinstance(value, dict):
        return {key: _shape(item, depth - 1) for key, item in value.items()}
    return value


@PROPERTY
@given(value=deep_values(), cut=st.sampled_from(("whole", "short", "long", "half")))
def test_any_depth_is_read_or_refused_as_a_recursive_parser_would(value: str, cut: str) -> None:
    text = {
        "whole": value,
        "short": value[:-1],
        "long": value + "]",
        "half": value[: len(value) // 2],
    }[cut]
    body = b'{"deep":' + text.encode() + b',"after":1}'
    kind, expected = _with_a_large_stack(lambda: json.loads(body))
    try:
        got = loads_nested(body)
    except ValueError:
        assert kind == "refused", (cut, len(text))
        return
    assert kind == "value", (cut, len(text), expected)
    assert got["after"] == 1
    assert _shape(got, LAYER_DEPTH) == _shape(expected, LAYER_DEPTH)


@PROPERTY
@given(value=deep_values())
def test_within_orjsons_bound_the_value_is_orjsons_to_the_layer_depth(value: str) -> None:
    body = value.encode()
    try:
        expected = orjson.loads(body)
    except orjson.JSONDecodeError:
        return  # deeper than orjson goes, or 1e400: the test above
    assert _shape(loads_nested(body), LAYER_DEPTH) == _shape(expected, LAYER_DEPTH)


# ── through the real webhook ────────────────────────────────────────────────────────────────────


def _deep(depth: int, **fields: object) -> bytes:
    rest = orjson.dumps(fields)[1:]
    return b'{"x":' + b"[" * depth + b"]" * depth + b"," + rest


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 65536):
        yield body[start : start + 65536]


WAYS: dict[str, Callable[[httpx.Client, bytes], httpx.Response]] = {
    "direct": lambda client, body: client.post("/event", content=body),
    "query string": lambda client, body: client.post("/event?from=query", content=body),
    "chunked": lambda client, body: client.post("/event", content=_chunks(body)),
    "batch": lambda client, body: client.post("/events", content=b"[" + body + b"]"),
    "chunked batch": lambda client, body: client.post(
        "/events", content=_chunks(b"[" + body + b"]")
    ),
    "ndjson": lambda client, body: client.post(
        "/events", content=body + b"\n", headers={"content-type": "application/x-ndjson"}
    ),
}


@pytest.mark.parametrize("depth", [986, 1023, 1024, 5000, DEEPEST])
def test_deep_bodies_are_stored_as_the_original_stored_them_on_every_path(
    webhook: WebhookProcess, settings: Settings, depth: int
) -> None:
    with httpx.Client(base_url=webhook.url, timeout=30) as client:
        for n, (way, post) in enumerate(WAYS.items()):
            fields = {"event_kind": "fill", "success": True, "timestamp": f"2026-04-23T10:00:0{n}Z"}
            answer = post(client, _deep(depth, **fields))
            assert answer.status_code == 200, (way, answer.text)
            assert answer.headers["content-type"] == "application/json", way
            assert answer.headers.get("connection") != "close", way
            reference = client.post("/event", json=fields)  # the same event, nothing nested
            assert reference.status_code == 200, reference.text
    records = [record.partition(b"\t")[2] for record in spool_records(settings)]
    assert len(records) == 2 * len(WAYS)
    assert records[0::2] == records[1::2]  # each deep body's line is its plain twin's
    assert webhook.process.poll() is None


BROKEN = (
    b'{"x":' + b"[" * 5000 + b"]" * 4999 + b"}",  # one left open
    b'{"x":' + b"[" * 5000 + b"]" * 5001 + b"}",  # one too many
    b'{"x":' + b"[" * 5000 + b'"open' + b"]" * 5000 + b"}",
    b'{"x":' + b"[" * 5000 + b"1 2" + b"]" * 5000 + b"}",
    b"[" * 5000 + b"]" * 5000,  # a deep array is no event
)


@pytest.mark.parametrize("way", ["direct", "query string", "chunked"])
def test_broken_deep_bodies_are_a_json_400_and_the_connection_goes_on(
    webhook: WebhookProcess, settings: Settings, way: str
) -> None:
    post = WAYS[way]
    with httpx.Client(base_url=webhook.url, timeout=30) as client:
        for body in BROKEN:
            answer = post(client, body)
            assert answer.status_code == 400, (way, answer.text)
            assert answer.headers["content-type"] == "application/json"
            assert answer.headers.get("connection") != "close"
            assert answer.json()["error"]
        refused = post(client, b'{"error":' + b"[" * 5000 + b"]" * 5000 + b"}")
        assert refused.status_code == 422, refused.text
        assert refused.json()["details"] == [{"field": "error", "reason": "must be a string"}]
        assert client.get("/health").status_code == 200  # the same connection, still served
    assert spool_records(settings) == []


def test_broken_deep_events_in_a_batch_are_rejected_one_by_one(
    webhook: WebhookProcess, settings: Settings
) -> None:
    good = _deep(5000, success=True)
    with httpx.Client(base_url=webhook.url, timeout=30) as client:
        lines = client.post(
            "/events",
            content=b"\n".join((*BROKEN, good)),
            headers={"content-type": "application/x-ndjson"},
        )
        array = client.post("/events", content=b"[" + BROKEN[0] + b"," + good + b"]")
        items = client.post("/events", content=b"[" + BROKEN[-1] + b"," + good + b"]")
    assert lines.status_code == 200, lines.text
    assert [r.get("status") for r in lines.json()["results"]] == [400] * len(BROKEN) + [None]
    assert array.status_code == 400 and "a batch is a JSON array" in array.json()["error"]
    assert items.status_code == 200, items.text
    assert (items.json()["accepted"], items.json()["rejected"]) == (1, 1)
    assert len(spool_records(settings)) == 2
