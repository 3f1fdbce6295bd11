"""The ceiling for `bench webhook`: the same ASGI server as Observer's webhook, with an app that
only reads and parses the body and answers, writing nothing.

What Observer's webhook does beyond this (validation, the op line, the spool write and its fsync
before answering) is what the gap between the two costs; what uvicorn itself costs against the
original is the gap between this and the original.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Message = MutableMapping[str, Any]
ANSWER = b'{"accepted":true,"ring_size":0}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    if body:
        orjson.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
