"""The webhook's HTTP layer: `POST /event`, `POST /events`, `GET /health`, `GET /stats`, as a bare
ASGI app.

It stays thin on purpose (a framework costs ~3× on the hot path): routing, the body limit, the
optional bearer token and JSON answers. What a posted body becomes lives in
`observer.webhook.door` (validation in `observer.webhook.events`, durability in `observer.intake`,
stats and idempotency in `observer.webhook.ledger`); nothing here decides what an op is or how it
is stored. The HTTP/1.1 protocol answers most `POST /event` and `POST /events` requests itself,
through the same door (`observer.webhook.protocol`); this app serves every other request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from observer.errors import ClientGone, EventError
from observer.instance import instance_of
from observer.intake.checkpoint import spool_bytes_waiting
from observer.intake.group_commit import Intake
from observer.settings import Settings
from observer.webhook.door import EventDoor, Headers, Reply
from observer.webhook.health import HealthProbe
from observer.webhook.ledger import Ledger
from observer.webhook.notify import SpoolNotifier

log = logging.getLogger("observer.webhook")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RETRY_AFTER_SECONDS = b"1"
JSON_CONTENT_TYPE = (b"content-type", b"application/json")
ROUTES: dict[str, tuple[str, ...]] = {
    "/event": ("POST",),
    "/events": ("POST",),
    "/health": ("GET", "HEAD"),
    "/stats": ("GET", "HEAD"),
}


class WebhookApp:
    """ASGI application; owns the Intake's life cycle through ASGI lifespan events."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.probe = HealthProbe(settings)
        self.notifier = SpoolNotifier(
            settings.prefect_api_url,
            pending=lambda: spool_bytes_waiting(settings) > 0,
            instance=instance_of(settings),
        )
        self.ledger = Ledger(settings, on_durable=self.notifier.poke)
        self.intake: Intake[int] = Intake(settings, self.ledger)
        self.door = EventDoor(settings, self.ledger, self.intake)
        self._token = settings.token.encode() if settings.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.ledger.open()
                    self.intake.open()
                    self.notifier.start()
                    self.probe.start()
                except Exception as exc:  # start-up failure must be reported, not swallowed
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.probe.stop()
                await self.notifier.stop()
                self.intake.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        allowed = ROUTES.get(path)
        if allowed is None:
            await respond(send, 404, {"error": f"no such path: {path}"})
            return
        if method not in allowed:
            await respond(
                send,
                405,
                {"error": f"method {method} not allowed on {path}"},
                extra=[(b"allow", ", ".join(allowed).encode())],
            )
            return
        if path != "/health" and not self.authorized(scope["headers"]):
            await respond(
                send,
                401,
                {"error": "missing or wrong bearer token"},
                extra=[(b"www-authenticate", b"Bearer")],
            )
            return
        head = method == "HEAD"
        if path == "/event":
            await self._post(scope, receive, send, self.door.post_event)
        elif path == "/events":
            content_type = header(scope, b"content-type")
            await self._post(
                scope,
                receive,
                send,
                lambda body, reply: self.door.post_events(body, content_type, reply),
            )
        elif path == "/health":
            await respond(send, 200, await self._health(), head=head)
        else:
            self.ledger.catch_up(self.intake.in_flight)
            await respond(send, 200, self.ledger.window.stats(), head=head)

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, post: Callable[[bytes, Reply], None]
    ) -> None:
        try:
            body = await read_body(scope, receive, self.settings.max_body_bytes)
        except EventError as exc:
            await respond(send, exc.status, exc.to_json())
            return
        except ClientGone:
            return
        answer: asyncio.Future[tuple[int, bytes, Headers]] = (
            asyncio.get_running_loop().create_future()
        )

        def reply(status: int, payload: bytes, headers: Headers) -> None:
            if not answer.done():
                answer.set_result((status, payload, headers))

        post(body, reply)
        status, payload, headers = await answer
        await send_json(send, status, payload, headers)

    async def _health(self) -> dict[str, Any]:
        self.ledger.catch_up(self.intake.in_flight)
        return {
            "status": "ok",
            "ops_in_ring": len(self.ledger.window),
            "queued": self.intake.queued,
            "write_errors": self.intake.write_errors,
            "ingest": self.probe.ingest_state(),
            "gateway": self.probe.gateway_state(),
        }

    def authorized(self, headers: Headers) -> bool:
        """Whether the request may pass: no token configured, or its bearer token."""
        if self._token is None:
            return True
        for name, value in headers:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self._token
                )
        return False


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; more than `limit` bytes is a 413 `EventError`, raised before the
    rest is read."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    message = await receive()
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        raise _too_large(limit)
    if not message.get("more_body", False):
        return body  # the usual case: the whole body in one message
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":  # a disconnect: the body so far is not the body
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> EventError:
    return EventError(f"request body larger than the limit of {limit} bytes", status=413)


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def respond(
    send: Send,
    status: int,
    body: dict[str, Any],
    *,
    extra: Headers = (),
    head: bool = False,
) -> None:
    await send_json(send, status, orjson.dumps(body), extra, head=head)


async def send_json(
    send: Send, status: int, payload: bytes, extra: Headers, *, head: bool = False
) -> None:
    headers = [JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(payload)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else payload})
