"""Tell Prefect that the spool has new records, so the `ingest-events` deployment runs soon.

Best effort by design: durability comes from the spool, not from this event. A lost or refused
event only means the ingestion flow's safety schedule picks the records up instead. Bursts are
coalesced: at most one event per `min_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx

from observer.catalog import SPOOL_APPENDED_EVENT
from observer.instance import Instance

log = logging.getLogger("observer.notify")


def due_runs_query(instance: Instance) -> dict[str, object]:
    """`POST /flow_runs/filter` body: this instance's ingest-events runs waiting to start
    (scheduled within 5 s, waiting for the running one's slot, or pending), due for less than 10
    minutes.

    A running run is not counted: it may have read the spool before these records arrived, so
    one more run may wait behind it, and only one (the deployment runs one at a time, ENQUEUE).
    """
    now = datetime.now(UTC)
    return {
        "flow_runs": {
            "state": {"type": {"any_": ["SCHEDULED", "PENDING"]}},
            # A run due for more than 10 minutes is stuck, not about to ingest anything.
            "expected_start_time": {
                "before_": (now + timedelta(seconds=5)).isoformat(),
                "after_": (now - timedelta(minutes=10)).isoformat(),
            },
        },
        "deployments": {"name": {"any_": [instance.ingest_deployment]}},
        "limit": 1,
    }


class SpoolNotifier:
    """Sends `observer.spool.appended` when records arrive, and again while any stay uningested.

    One run drains whatever is waiting, and at most one more waits behind it: the event is not
    sent while an ingest-events run is already waiting to start, so a burst of notifications makes
    a handful of runs, not one per batch. Re-sending every `renotify_interval` seconds while
    `pending()` says records wait covers an event lost on its way (Prefect down, restarting); an
    idle webhook, its spool drained, does not look.
    """

    def __init__(
        self,
        prefect_api_url: str | None,
        pending: Callable[[], bool],
        *,
        instance: Instance,
        min_interval: float = 1.0,
        renotify_interval: float = 3.0,
    ) -> None:
        self.api_url = prefect_api_url.rstrip("/") if prefect_api_url else None
        self.instance = instance
        self.min_interval = min_interval
        self.renotify_interval = renotify_interval
        self.sent = 0
        self.failed = 0
        self._pending = pending
        self._wanted: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.api_url is None:
            return
        self._wanted = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def poke(self) -> None:
        """Called on the event loop after each durable batch."""
        if self._wanted is not None:
            self._wanted.set()

    async def _run(self) -> None:
        assert self._wanted is not None
        # Whether records may still wait: then the spool is looked at every renotify_interval;
        # once it is found drained, nothing is looked at until the next durable batch.
        maybe_waiting = True
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                try:
                    await asyncio.wait_for(
                        self._wanted.wait(),
                        timeout=self.renotify_interval if maybe_waiting else None,
                    )
                except TimeoutError:
                    if not await asyncio.to_thread(self._pending):
                        maybe_waiting = False
                        continue
                self._wanted.clear()
                maybe_waiting = True
                if await self._ingestion_due(client):
                    # A run is waiting to start: it will take these records too.
                    continue
                await self._send(client)
                await asyncio.sleep(self.min_interval)

    async def _ingestion_due(self, client: httpx.AsyncClient) -> bool:
        """Whether an ingest-events run is waiting to start (it will read these records).

        When Prefect cannot be asked, the event is sent: a spare run is cheaper than a late one.
        """
        try:
            response = await client.post(
                f"{self.api_url}/flow_runs/filter", json=due_runs_query(self.instance)
            )
            response.raise_for_status()
            return bool(response.json())
        except (httpx.HTTPError, ValueError):
            return False

    async def _send(self, client: httpx.AsyncClient) -> None:
        event = {
            "id": str(uuid.uuid4()),
            "occurred": datetime.now(UTC).isoformat(),
            "event": SPOOL_APPENDED_EVENT,
            "resource": {"prefect.resource.id": self.instance.spool_resource},
            "payload": {},
        }
        try:
            response = await client.post(f"{self.api_url}/events", json=[event])
            response.raise_for_status()
            self.sent += 1
        except httpx.HTTPError as exc:
            self.failed += 1
            if self.failed == 1 or self.failed % 100 == 0:
                log.warning("could not notify Prefect (%s); the safety schedule will ingest", exc)
