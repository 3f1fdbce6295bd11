"""`POST /event` and `POST /events` answered by the HTTP/1.1 protocol itself, without an ASGI task.

Under uvicorn every request becomes a scope, a request-response cycle, an asyncio task running the
app and two socket writes for the answer: on this project's 2-core machine that machinery cost more
than everything the webhook does with an event (the task alone, then its wake-up once the event is
durable). The protocol (`observer.webhook.protocol`) therefore hands a plain posted body straight to
the event door (`observer.webhook.door`, the same code the ASGI app calls) and writes the answer in
one write when the door replies: at once for a refused body, otherwise from the intake's callback,
one pass over a durable batch answering every request in it.

Only the plain case takes this path: exactly `/event` or `/events`, POST, a `Content-Length` within
`OBSERVER_MAX_BODY_BYTES`, no `Expect`, `Transfer-Encoding` or upgrade, the bearer token right
when one is configured, and no earlier request on the connection still unanswered. Everything else
(wrong token, a body too large, chunked bodies, pipelined requests behind an unanswered one, other
paths) goes through uvicorn and the ASGI app as before, which answer it the same way.

A `DirectRequest` stands in for uvicorn's cycle while it waits, so that uvicorn's connection logic
(keep-alive, pipelining, shutdown, a client that leaves) treats it as a request in progress.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from observer.webhook.door import EventDoor, Headers

#: The direct routes, by the request target exactly as sent (a query string or an escaped path
#: goes the ASGI way).
ROUTES = frozenset((b"/event", b"/events"))
#: Request headers that send a request the ASGI way.
_NOT_DIRECT = frozenset((b"expect", b"transfer-encoding", b"upgrade"))
_JSON = b"content-type: application/json\r\ncontent-length: "


class _NoEvent:
    """uvicorn sets its cycle's `message_event` when the connection is lost; nothing waits here."""

    def set(self) -> None:
        pass


class DirectRequest:
    """A request the protocol answers itself; what uvicorn's connection code reads of a cycle.

    `answer` writes the reply to the connection and ends the request; it is the protocol's.
    """

    __slots__ = (
        "answer",
        "chunks",
        "content_type",
        "disconnected",
        "keep_alive",
        "more_body",
        "on_response",
        "path",
        "response_complete",
    )

    message_event = _NoEvent()

    def __init__(
        self,
        path: bytes,
        content_type: bytes | None,
        keep_alive: bool,
        on_response: Callable[[], None],
        answer: Callable[[DirectRequest, int, bytes, Headers], None],
    ) -> None:
        self.path = path
        self.content_type = content_type
        self.keep_alive = keep_alive
        self.on_response = on_response  # uvicorn's, or what a refused next head waits for
        self.answer = answer
        self.chunks: list[bytes] = []
        self.more_body = True
        self.response_complete = False
        self.disconnected = False

    def complete(self, door: EventDoor) -> None:
        """The body is whole: hand it to the door."""
        self.more_body = False
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        if self.path == b"/event":
            door.post_event(body, self.reply)
        else:
            door.post_events(body, self.content_type, self.reply)

    def reply(self, status: int, payload: bytes, headers: Headers) -> None:
        if not self.response_complete:
            self.response_complete = True
            self.answer(self, status, payload, headers)


def head_bytes(
    default: bytes, status: int, headers: Headers, length: int, keep_alive: bool
) -> bytes:
    """The status line and headers uvicorn writes for the ASGI app's JSON answer: its default
    headers (`default`, already joined: `date`), content-type, content-length, the answer's own,
    `connection: close` when the connection ends."""
    head = b"%s%s%s%d\r\n" % (STATUS_LINE[status], default, _JSON, length)
    for pair in headers:
        head += b"%s: %s\r\n" % pair
    return head + (b"\r\n" if keep_alive else b"connection: close\r\n\r\n")


def joined_headers(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % pair for pair in headers)


def direct_headers(headers: list[tuple[bytes, bytes]], max_body: int) -> tuple[bool, bytes | None]:
    """Whether a POST's headers allow the direct path, and its content type."""
    length = -1
    content_type = None
    for name, value in headers:
        if name == b"content-length":
            if length >= 0 or not value.isdigit():
                return False, None
            length = int(value)
        elif name == b"content-type":
            content_type = value
        elif name in _NOT_DIRECT:
            return False, None
    return 0 <= length <= max_body, content_type
