"""`observed()`: call the gateway on an agent's behalf and have the call recorded as an op.

Agents import it (`from observer import observed`), so this module stays light: no Prefect, no
polars (the intake does not need them). The call is made once with
a timeout; its outcome, good or bad, is returned to the caller, never raised. Recording goes
through the durable intake like every other op, and a failure to record is logged, not raised:
the agent's call happened whether or not Observer could write it down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from functools import lru_cache
from typing import Any

import httpx

from observer.intake import record_ops
from observer.jsfmt import UNDEFINED, js_json, js_string, js_truthy
from observer.ops import Op, cut, now_timestamp
from observer.settings import Settings, load_settings
from observer.upstream import GatewayReply, acall_gateway, call_gateway, gateway_post

log = logging.getLogger("observer.observed")

SUMMARY_JSON_CHARS = 100
ANSWER_CHARS = 80


async def observed(
    endpoint: str,
    body: Any,
    description: str,
    *,
    settings: Settings | None = None,
    timeout: float | None = None,
    client: httpx.AsyncClient | None = None,
) -> tuple[Any, Op]:
    """POST `body` to `{GATEWAY_URL}{endpoint}`, record the op (`source "mcp"`), return `(data, op)`.

    `op.success` is False on a network error, a timeout, a non-2xx status, a reply that is not
    JSON or a JSON `error` field; `data` is then the reply, or `{"error": message}` without one.
    `timeout` defaults to OBSERVER_HTTP_TIMEOUT; pass `client` to reuse connections across calls.
    """
    settings = settings or default_settings()
    started = time.perf_counter()
    reply = await acall_gateway(gateway_post(settings, endpoint, body, timeout), client)
    op = build_op(endpoint, description, reply, started)
    await asyncio.to_thread(record_quietly, settings, op)
    return reply.data, op


def observed_sync(
    endpoint: str,
    body: Any,
    description: str,
    *,
    settings: Settings | None = None,
    timeout: float | None = None,
    client: httpx.Client | None = None,
) -> tuple[Any, Op]:
    """The synchronous twin of `observed()`, for callers without an event loop."""
    settings = settings or default_settings()
    started = time.perf_counter()
    reply = call_gateway(gateway_post(settings, endpoint, body, timeout), client)
    op = build_op(endpoint, description, reply, started)
    record_quietly(settings, op)
    return reply.data, op


def default_settings() -> Settings:
    """Settings from the environment, parsed once per distinct environment: parsing costs a few
    milliseconds, more than the rest of `observed()`'s own work."""
    return _settings_for(frozenset(os.environ.items()))


@lru_cache(maxsize=4)
def _settings_for(_environment: frozenset[tuple[str, str]]) -> Settings:
    return load_settings()


def build_op(endpoint: str, description: str, reply: GatewayReply, started: float) -> Op:
    """The original's op for one call; the timestamp is taken when the call has ended, as there."""
    fields: dict[str, Any] = {
        "timestamp": now_timestamp(),
        "endpoint": endpoint,
        "input_summary": description,
        "success": reply.error is None,
        "duration_ms": int((time.perf_counter() - started) * 1000),
        "output_summary": summarize(reply.data) if reply.error is None else f"ERROR: {reply.error}",
        "source": "mcp",
    }
    if reply.error is not None:
        fields["error"] = reply.error
    return Op(**fields)


def record_quietly(settings: Settings, op: Op) -> bool:
    """Record the op durably; on any failure log it and return False (never raise into the agent)."""
    try:
        record_ops(settings, [(None, op)])
    except Exception as exc:
        log.error("could not record the op of %s %r: %s", op.endpoint, op.input_summary, exc)
        return False
    return True


def summarize(data: Any) -> str:
    """The original's `summarize(data)`: a one-line description of a successful reply.

    Same rules and texts; strings are cut on character boundaries, and a non-string `answer`
    (which made the original throw) is written as JavaScript would print it.
    """
    if isinstance(data, dict):
        if "sql_matches" in data:
            matches = js_string(data["sql_matches"])
            reranked = js_string(data.get("vector_reranked", UNDEFINED))
            return f"hybrid: {matches} sql → {reranked} results"
        rows = data.get("rows")
        if js_truthy(rows):
            count = data.get("row_count")
            return f"{js_string(count if js_truthy(count) else _length(rows))} rows"
        answer = data.get("answer")
        if js_truthy(answer):
            head = cut(answer, ANSWER_CHARS) if isinstance(answer, str) else js_string(answer)
            return f"answer: {cut(head, ANSWER_CHARS)}..."
        sources = data.get("sources")
        if js_truthy(sources):
            return f"{js_string(_length(sources))} sources"
    return js_json(data, SUMMARY_JSON_CHARS)


def _length(value: Any) -> Any:
    """`value.length`: strings and arrays have one, objects only as a `length` key."""
    if isinstance(value, str | list):
        return len(value)
    if isinstance(value, dict):
        return value.get("length", UNDEFINED)
    return UNDEFINED
