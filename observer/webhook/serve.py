"""Run the webhook under uvicorn on the configured host and port.

The socket is bound here, before uvicorn starts, so a port in use is a clear message and a non-zero
exit (the original printed nothing useful and exited 0).
"""

from __future__ import annotations

import asyncio

import uvicorn

from observer.settings import Settings
from observer.webhook.app import WebhookApp
from observer.webhook.listen import bind_socket
from observer.webhook.protocol import Limits, guarded_protocol


class QuietServer(uvicorn.Server):
    """uvicorn's server ticking once a second instead of ten times. A tick refreshes the Date
    header (once a second either way: every tick here passes a counter of 0, which uvicorn
    counts as a whole second) and looks for a stop request, which can wait a second; an idle
    webhook then wakes its loop once a second."""

    async def main_loop(self) -> None:
        while not await self.on_tick(0):
            await asyncio.sleep(1.0)


def run_webhook(settings: Settings, http: type[asyncio.Protocol] | str | None = None) -> None:
    """Serve until SIGINT/SIGTERM; what is queued is written before the process exits.

    `http` replaces the bounded HTTP/1.1 protocol (`observer.webhook.protocol`): `bench hostile`
    runs the same app under uvicorn's own protocol, to compare.
    """
    sock = bind_socket(settings.host, settings.port)
    app = WebhookApp(settings)
    config = uvicorn.Config(
        app,
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # bound to loopback by default; no proxy to trust
        server_header=False,
        loop="uvloop",
        http=http or guarded_protocol(Limits.from_settings(settings), webhook=app),
        ws="none",
        timeout_keep_alive=settings.keepalive_timeout_seconds,  # type: ignore[arg-type]
        log_level="warning",
        timeout_graceful_shutdown=10,
        backlog=2048,
    )
    print(
        f"observer webhook listening on http://{settings.host}:{sock.getsockname()[1]}",
        flush=True,
    )
    QuietServer(config).run(sockets=[sock])
