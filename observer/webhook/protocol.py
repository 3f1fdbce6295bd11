"""The webhook's HTTP/1.1 connections, bounded in size, time and number.

uvicorn's httptools protocol reads a request head of any size (httptools grows a header value by
concatenation: one 256 MB header took 79 s and 230 MB while every other client waited), keeps a
connection that never sends its head forever, and its only cap (`limit_concurrency`) answers 503 on
every connection once reached, the ones in progress included. This subclass, passed to uvicorn as
its `http` protocol, adds:

- **Head size**: the bytes of a request line and headers are counted as they arrive, before the
  parser sees them; past `OBSERVER_MAX_HEADER_BYTES` the request is answered 431 and the connection
  closed, without reading the rest. A head that starts inside a read which also ended the previous
  request (pipelining) is measured exactly once it is parsed.
- **Time**: a connection must send a complete head within `OBSERVER_HEADER_TIMEOUT` of opening (or
  of the first byte of its next request), and the body within `OBSERVER_BODY_TIMEOUT` of the head;
  otherwise it is closed. A keep-alive connection left idle longer than `OBSERVER_KEEPALIVE_TIMEOUT`
  after an answer is closed too (by uvicorn's timer after an ASGI answer, by the sweeper below after
  a direct one). Time spent while the server itself stopped reading
  (back-pressure) or was answering does not count.
- **Number**: above `OBSERVER_MAX_CONNECTIONS` open connections, a new one is answered 503 with
  `Retry-After` once its head arrives, and closed; the connections already admitted are untouched.
- **Half-close**: a client that shuts down its sending side after a complete request still gets its
  answer (uvicorn closed the connection at EOF, dropping an answer whose event was already stored).

It also answers plain `POST /event` and `POST /events` requests itself, without an ASGI task
(`observer.webhook.direct` says which, and why).

One timer per server sweeps the open connections four times per timeout (at most once a second)
and keeps their clocks, so a request pays only the byte count and a few attribute writes (not the
timer per answer that uvicorn arms for its keep-alive timeout, and cancels at the next request).
"""

from __future__ import annotations

import asyncio
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from observer.settings import Settings
from observer.webhook.app import RETRY_AFTER_SECONDS, Receive, Scope, Send, WebhookApp, respond
from observer.webhook.direct import (
    ROUTES,
    DirectRequest,
    direct_headers,
    head_bytes,
    joined_headers,
)
from observer.webhook.door import Headers

#: Files the webhook keeps open besides its connections (spool, fsync helper, logs, Prefect client).
RESERVED_FILES = 64
#: What a connection may buffer besides its head and body (socket and parser buffers).
CONNECTION_OVERHEAD_BYTES = 64 * 1024
#: Share of the machine's memory that connections at their limits may take together.
MEMORY_SHARE = 4


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            keepalive_timeout=settings.keepalive_timeout_seconds,
            max_connections=settings.max_connections or machine_connection_limit(settings),
        )


def machine_connection_limit(settings: Settings) -> int:
    """The default cap: what the open-file limit allows, and what a quarter of the memory holds
    if every connection filled its head and body limits."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    by_files = soft - RESERVED_FILES if soft != resource.RLIM_INFINITY else 1 << 20
    per_connection = settings.max_body_bytes + settings.max_header_bytes + CONNECTION_OVERHEAD_BYTES
    by_memory = memory_bytes() // MEMORY_SHARE // per_connection
    return max(16, min(by_files, by_memory))


def memory_bytes() -> int:
    """Physical memory, or the cgroup's limit when the process runs under a smaller one."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical


def guarded_protocol(
    limits: Limits, webhook: WebhookApp | None = None
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for one server (uvicorn's `http=`), sharing one sweeper; with `webhook`
    (the server's app), it answers plain posted events itself."""
    guard = Guard(limits)
    if webhook is not None:
        webhook.intake.sole_client = lambda: len(guard.connections) == 1
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"guard": guard, "webhook": webhook},
    )


class Guard:
    """One per server: counts admitted connections and closes the ones that are late."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.interval = min(
            1.0, limits.header_timeout / 4, limits.body_timeout / 4, limits.keepalive_timeout / 4
        )
        self.now = 0.0  # the loop's clock at the last sweep: what connections stamp themselves with
        self.admitted = 0
        self.connections: set[GuardedHttpToolsProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._default_source: object = None  # uvicorn's default headers (a new list each second)
        self._default_bytes = b""

    def default_headers(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """uvicorn's default response headers (`date`), joined once per second, not per answer."""
        if headers is not self._default_source:
            self._default_source, self._default_bytes = headers, joined_headers(headers)
        return self._default_bytes

    def add(self, protocol: GuardedHttpToolsProtocol, loop: asyncio.AbstractEventLoop) -> None:
        self.connections.add(protocol)
        if self._timer is None:
            self.now = loop.time()
            self._timer = loop.call_later(self.interval, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self.now = loop.time()
        for protocol in list(self.connections):
            protocol.check_time(now)
        self._timer = (
            loop.call_later(self.interval, self._sweep, loop) if self.connections else None
        )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (see the module docstring)."""

    guard: ClassVar[Guard]
    webhook: ClassVar[WebhookApp | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_head = self.guard.limits.max_header_bytes
        self._in_head = True  # from a request's end (or the start) to the end of the next head
        self._head_bytes = 0  # bytes read since then, less `_slack`
        self._slack = 0  # bytes of the head that may have come in the read that ended a request
        self._read = 0  # size of the current read
        self._heads = 0  # heads read whole on this connection
        self._phase = -1  # what the sweeper saw last: `_phase_of`
        self._phase_since = 0.0  # …and since when (the loop's clock)
        self._admitted = False
        self._refused = False  # a head over the limit is waiting for earlier answers to be sent

    # ── connection ───────────────────────────────────────────────────────────────────────────

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        guard.add(self, self.loop)
        self._phase, self._phase_since = _phase_of(0, True, False), guard.now  # the first head
        if guard.admitted >= guard.limits.max_connections:
            self.app = over_capacity  # its head is answered 503, and the connection closed
        else:
            guard.admitted += 1
            self._admitted = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.connections.discard(self)
        if self._admitted:
            self.guard.admitted -= 1
            self._admitted = False
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:
        """Keep a half-closed connection open for the answer to a request it sent whole."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            cycle.keep_alive = False  # closed once the answer is written
            return True
        return None

    def check_time(self, now: float) -> None:
        """Close the connection if its client has been sending one head, or one body, too long,
        or has sent nothing for longer than the keep-alive timeout since a direct answer.

        Called by the sweeper; the clock of a phase starts at the first sweep that sees it, so the
        hot path only counts heads. Not the client's time: the server not reading (back-pressure),
        and, between requests, answering and then waiting after an ASGI answer (uvicorn's
        keep-alive timer watches that) until the next request's first byte.
        """
        if self.transport.is_closing():
            return
        in_head = self._in_head
        between_requests = in_head and self._heads and not self._head_bytes
        idle = between_requests and self._directly_answered()
        phase = _phase_of(self._heads, in_head, idle)
        if phase != self._phase or self.flow.read_paused or (between_requests and not idle):
            self._phase, self._phase_since = phase, now
            return
        limits = self.guard.limits
        timeout = (
            limits.keepalive_timeout
            if idle
            else limits.header_timeout
            if in_head
            else limits.body_timeout
        )
        if now - self._phase_since > timeout:
            self.transport.close()

    def _directly_answered(self) -> bool:
        """Whether the last request was answered the direct way (no keep-alive timer armed)."""
        cycle = self.cycle
        return type(cycle) is DirectRequest and cycle.response_complete

    # ── bytes ────────────────────────────────────────────────────────────────────────────────

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            size = self._head_bytes + len(data)
            if size > self._max_head:
                self._near_the_limit(data)
                return
            self._head_bytes = size
        self._read = len(data)
        _data_received(self, data)

    def _near_the_limit(self, data: bytes) -> None:
        """Parse only what the head may still hold; if the head has not ended there, refuse it."""
        if self._refused:
            return  # refused, waiting for earlier answers: the rest is not read
        room = self._max_head - self._head_bytes
        self._head_bytes = self._max_head
        self._read = room
        _data_received(self, data[:room])
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes == self._max_head:  # neither ended nor a new one
            self._refuse_head()
        else:
            self.data_received(data[room:])

    def _refuse_head(self) -> None:
        """Answer 431 and close; after the answers to earlier requests, if some are still due."""
        answer = raw_response(431, head_too_large_message(self._max_head))
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(answer)
            self.transport.close()
            return
        self._refused = True
        self.flow.pause_reading()

        def after_the_last_answer() -> None:
            self.transport.write(answer)
            self.transport.close()

        cycle.on_response = after_the_last_answer

    async def _head_too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(
            send, 431, head_too_large_message(self._max_head), extra=[(b"connection", b"close")]
        )

    # ── parser callbacks ─────────────────────────────────────────────────────────────────────

    def on_message_begin(self) -> None:
        """uvicorn's, less the ASGI scope: only a request that goes the ASGI way needs one
        (`_begin_scope`)."""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def _begin_scope(self) -> None:
        """The scope uvicorn makes as a request begins, with the head parsed so far."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        _on_message_begin(self)
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        # Part of this head may have come in the read that ended the previous request (pipelining),
        # not counted for it: if that could matter, measure the head as parsed.
        if (
            self._head_bytes + self._slack > self._max_head
            and head_size(self.url, self.headers) > self._max_head
        ):
            self.app = self._head_too_large
        elif self.url in ROUTES and self._start_direct():
            return
        self._begin_scope()
        _on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is DirectRequest:
            cycle.chunks.append(body)  # within the body limit: its Content-Length said so
        else:
            _on_body(self, body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        direct = type(cycle) is DirectRequest and cycle.more_body
        if not direct:
            _on_message_complete(self)
        self._in_head = True
        self._head_bytes = 0
        self._slack = self._read  # the next head may begin in the rest of this read
        if direct:
            cycle.complete(self.webhook.door)  # type: ignore[union-attr]

    # ── the direct path (observer.webhook.direct) ────────────────────────────────────────────

    def _start_direct(self) -> bool:
        """Take this request the direct way if it is a plain posted event and the connection has
        no unanswered request; else leave it to uvicorn and the ASGI app."""
        webhook, cycle = self.webhook, self.cycle
        if (
            webhook is None
            or self.app is not webhook
            or self.access_log
            or (cycle is not None and not cycle.response_complete)
            or self.parser.get_method() != b"POST"
        ):
            return False
        plain, content_type = direct_headers(self.headers, webhook.settings.max_body_bytes)
        if not plain or not webhook.authorized(self.headers):
            return False
        keep_alive = self.parser.should_keep_alive() and self.parser.get_http_version() != "1.0"
        self.cycle = DirectRequest(  # type: ignore[assignment]
            self.url, content_type, keep_alive, self._after_direct_answer, self._answer_direct
        )
        return True

    def _answer_direct(
        self, request: DirectRequest, status: int, payload: bytes, headers: Headers
    ) -> None:
        """Write a direct request's answer in one write (unless the client left), then go on as
        uvicorn does after an answer (the next pipelined request), less its keep-alive timer: the
        sweeper closes a connection left idle (`check_time`)."""
        transport = self.transport
        if not request.disconnected and not transport.is_closing():
            default = self.guard.default_headers(self.server_state.default_headers)
            head = head_bytes(default, status, headers, len(payload), request.keep_alive)
            transport.write(head + payload)
            if not request.keep_alive:
                transport.close()
        request.on_response()

    def _after_direct_answer(self) -> None:
        """uvicorn's `on_response_complete` without arming a timer per answer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)


# Called directly on the per-request paths: cheaper than super() there.
_data_received = HttpToolsProtocol.data_received
_on_message_begin = HttpToolsProtocol.on_message_begin
_on_headers_complete = HttpToolsProtocol.on_headers_complete
_on_body = HttpToolsProtocol.on_body
_on_message_complete = HttpToolsProtocol.on_message_complete


def _phase_of(heads: int, in_head: bool, idle: bool) -> int:
    """A connection's phase as the sweeper tells them apart: heads read whole, whether it is
    waiting for (or reading) a head, and whether it has waited idle since a direct answer."""
    return 4 * heads + 2 * in_head + idle


def head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """A parsed head's size on the wire, near enough: request line and `name: value` lines."""
    return len(url) + 16 + sum(len(name) + len(value) + 4 for name, value in headers)


def head_too_large_message(limit: int) -> dict[str, str]:
    return {"error": f"request line and headers larger than the limit of {limit} bytes"}


def raw_response(status: int, body: dict[str, Any]) -> bytes:
    """A complete JSON answer that closes the connection, for when no ASGI cycle exists."""
    payload = orjson.dumps(body)
    return (
        b"%scontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
        % (
            STATUS_LINE[status],
            len(payload),
            payload,
        )
    )


async def over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    await respond(
        send,
        503,
        {"error": "too many open connections; retry later"},
        extra=[(b"retry-after", RETRY_AFTER_SECONDS), (b"connection", b"close")],
    )
