"""The webhook's HTTP layer: `POST /event`, `GET /health`, `GET /stats`, as a bare ASGI app.

It stays thin on purpose (a framework costs ~3× on the hot path): routing, the body limit, the
optional bearer token and JSON answers. Validation lives in `observer.webhook.events`, durability in
`observer.intake`, what is stored (stats, idempotency) in `observer.webhook.ledger`; nothing here
decides what an op is or how it is stored.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from observer.errors import ClientGone, EventError, IntakeError
from observer.instance import instance_of
from observer.intake.checkpoint import spool_bytes_waiting
from observer.intake.group_commit import Intake
from observer.settings import Settings
from observer.webhook.events import parse_event
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
        if path != "/health" and not self._authorized(scope):
            await respond(
                send,
                401,
                {"error": "missing or wrong bearer token"},
                extra=[(b"www-authenticate", b"Bearer")],
            )
            return
        head = method == "HEAD"
        if path == "/event":
            await self._event(scope, receive, send)
        elif path == "/health":
            await respond(send, 200, await self._health(), head=head)
        else:
            self.ledger.catch_up(self.intake.in_flight)
            await respond(send, 200, self.ledger.window.stats(), head=head)

    async def _event(self, scope: Scope, receive: Receive, send: Send) -> None:
        ledger = self.ledger
        try:
            body = await read_body(scope, receive, self.settings.max_body_bytes)
            event = parse_event(body)
        except EventError as exc:
            await respond(send, exc.status, exc.to_json())
            return
        except ClientGone:
            return
        event_id = event.event_id
        if ledger.is_duplicate(event_id):
            answer = {"accepted": True, "ring_size": len(ledger.window), "duplicate": True}
            await respond(send, 200, answer)
            return
        ledger.expect(event_id)
        try:
            ring_size = await self.intake.submit(event_id, event.to_fields())
        except IntakeError as exc:
            ledger.refused_id(event_id)
            await respond(
                send, 503, {"error": str(exc)}, extra=[(b"retry-after", RETRY_AFTER_SECONDS)]
            )
            return
        payload = b'{"accepted":true,"ring_size":%d}' % ring_size  # the hot path
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [JSON_CONTENT_TYPE, (b"content-length", b"%d" % len(payload))],
            }
        )
        await send({"type": "http.response.body", "body": payload})

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

    def _authorized(self, scope: Scope) -> bool:
        if self._token is None:
            return True
        for name, value in scope["headers"]:
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


async def respond(
    send: Send,
    status: int,
    body: dict[str, Any],
    *,
    extra: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> None:
    payload = orjson.dumps(body)
    headers = [
        JSON_CONTENT_TYPE,
        (b"content-length", b"%d" % len(payload)),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else payload})
