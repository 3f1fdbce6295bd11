"""`observed()` against a real fake gateway on loopback: outcomes, the op, durable recording."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from observer import observed, observed_sync
from observer.jsfmt import js_json
from observer.observed import summarize
from observer.ops import Op
from observer.pipelines.ingest import drain_spool
from observer.settings import Settings, load_settings
from tests.fakes import FakeUpstream, Hang, Reply


def _recorded(settings: Settings) -> list[dict[str, Any]]:
    drain_spool(settings)
    return [orjson.loads(line) for line in settings.layout.ops_path.read_bytes().splitlines()]


def _call(settings: Settings, *args: Any, sync: bool, **kwargs: Any) -> tuple[Any, Op]:
    if sync:
        return observed_sync(*args, settings=settings, **kwargs)
    return asyncio.run(observed(*args, settings=settings, **kwargs))


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_success_returns_data_and_records_the_op(
    gateway: FakeUpstream, settings: Settings, sync: bool
) -> None:
    gateway.script("/search", Reply(200, {"rows": [1, 2, 3], "row_count": 42}))

    data, op = _call(settings, "/search", {"q": "é"}, "find nurses", sync=sync)

    assert data == {"rows": [1, 2, 3], "row_count": 42}
    assert gateway.seen("/search")[0].body == {"q": "é"}
    assert (op.endpoint, op.input_summary, op.success, op.output_summary, op.source) == (
        "/search",
        "find nurses",
        True,
        "42 rows",
        "mcp",
    )
    assert "error" not in op.model_fields_set  # absent on success, as in the original
    assert isinstance(op.duration_ms, int) and op.duration_ms >= 0
    assert _recorded(settings) == [orjson.loads(op.to_line())]


@pytest.mark.parametrize(
    ("reply", "error", "data"),
    [
        (Reply(500, {"oops": 1}), "HTTP 500", {"oops": 1}),
        (Reply(503, {"error": "busy"}), "HTTP 503: busy", {"error": "busy"}),
        (Reply(200, {"error": "no such table"}), "no such table", {"error": "no such table"}),
        (Reply(200, {"error": {"code": 7}}), '{"code":7}', {"error": {"code": 7}}),
        (Reply(200, b"<html>"), "reply is not JSON (HTTP 200)", None),
    ],
    ids=["500", "503-with-error", "json-error", "object-error", "not-json"],
)
def test_failures_are_returned_and_recorded(
    gateway: FakeUpstream, settings: Settings, reply: Reply, error: str, data: Any
) -> None:
    gateway.script("/sql", reply)

    got, op = _call(settings, "/sql", {"sql": "select 1"}, "query", sync=False)

    assert (op.success, op.error, op.output_summary) == (False, error, f"ERROR: {error}")
    assert got == (data if data is not None else {"error": error})
    assert _recorded(settings)[0]["error"] == error


def test_connection_refused_is_a_failed_op(settings: Settings) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = load_settings(GATEWAY_URL=f"http://127.0.0.1:{port}")

    data, op = _call(refused, "/x", {}, "down", sync=True)

    assert not op.success and op.error is not None and "cannot reach" in op.error
    assert data == {"error": op.error}
    assert _recorded(refused)[0]["success"] is False


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_timeout_is_a_failed_op(gateway: FakeUpstream, settings: Settings, sync: bool) -> None:
    gateway.script("/slow", Hang(5))

    data, op = _call(settings, "/slow", {}, "slow call", sync=sync, timeout=0.2)

    assert not op.success and op.error is not None and op.error.startswith("timeout")
    assert data == {"error": op.error}


def test_recording_failure_never_raises(
    gateway: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    unwritable = load_settings(GATEWAY_URL=gateway.url, OBSERVER_DATA_DIR=str(blocker))

    data, op = _call(unwritable, "/ok", {}, "still answered", sync=False)

    assert data == {} and op.success
    assert "could not record" in caplog.text


@pytest.mark.parametrize(
    ("data", "summary"),
    [
        ({"sql_matches": 3, "vector_reranked": 2.0}, "hybrid: 3 sql → 2 results"),
        ({"sql_matches": None}, "hybrid: null sql → undefined results"),
        ({"rows": [], "row_count": 0}, "0 rows"),
        ({"rows": 0, "answer": "x" * 90}, f"answer: {'x' * 80}..."),
        ({"answer": "😀" * 81}, f"answer: {'😀' * 80}..."),
        ({"sources": [1, 2]}, "2 sources"),
        ({"b": 1.0, "10": "y", "2": None}, '{"2":null,"10":"y","b":1}'),
        (None, "null"),
        ({"text": "z" * 200}, js_json({"text": "z" * 200})[:100]),
    ],
)
def test_summarize_matches_the_original(data: Any, summary: str) -> None:
    assert summarize(data) == summary


def test_settings_default_to_the_environment(gateway: FakeUpstream, settings: Settings) -> None:
    gateway.script("/env", Reply(200, {"sources": ["a"]}))

    data, op = observed_sync("/env", [1], "from the environment")

    assert (data, op.output_summary) == ({"sources": ["a"]}, "1 sources")
    assert gateway.seen("/env")[0].body == [1]
    assert _recorded(settings)[0]["input_summary"] == "from the environment"


def test_redirects_are_followed_like_fetch(gateway: FakeUpstream, settings: Settings) -> None:
    gateway.script("/old", Reply(307, {}, headers={"location": "/new"}))
    gateway.script("/new", Reply(200, {"answer": "moved"}))

    data, op = _call(settings, "/old", {"k": 1}, "moved endpoint", sync=False)

    assert (data, op.output_summary) == ({"answer": "moved"}, "answer: moved...")
    assert gateway.seen("/new")[0].body == {"k": 1}
