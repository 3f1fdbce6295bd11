"""What `/health` reports beyond the original's two keys: ingestion progress and the gateway.

The gateway is probed in the background once per cycle, so `/health` stays O(1) and the webhook
never depends on the gateway being up (the original refused to start without it).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from observer.intake.checkpoint import load_checkpoint, spool_bytes_waiting
from observer.ops import now_timestamp
from observer.settings import Settings
from observer.upstream import probe_gateway


class HealthProbe:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._gateway: dict[str, Any] = {"reachable": None, "detail": "not probed yet"}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def gateway_state(self) -> dict[str, Any]:
        return self._gateway

    def ingest_state(self) -> dict[str, Any]:
        """How far ingestion is: ops moved so far and spool bytes still waiting."""
        checkpoint = load_checkpoint(self.settings)
        return {
            "ingested_total": checkpoint.ingested_total,
            "spool_bytes_waiting": spool_bytes_waiting(self.settings, checkpoint),
        }

    async def _loop(self) -> None:
        while True:
            state = await probe_gateway(self.settings)
            state["checked_at"] = now_timestamp()
            self._gateway = state
            await asyncio.sleep(self.settings.cycle_seconds)
