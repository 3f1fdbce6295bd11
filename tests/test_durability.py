"""kill -9 of the webhook in the middle of a burst: nothing acknowledged is lost, nothing doubled."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from flows.ingest_events import ingest_events
from observer.ops import Op
from observer.settings import Settings
from tests.fakes import WebhookProcess

CLIENTS = 32


async def burst(url: str, stop_at: float, acked: set[str], sent: set[str]) -> None:
    """CLIENTS concurrent clients posting numbered events until `stop_at` or the server dies."""

    async def client(number: int) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            n = 0
            while time.monotonic() < stop_at:
                event_id = f"c{number}-{n}"
                sent.add(event_id)
                body = {"event_id": event_id, "input_summary": event_id, "success": True}
                try:
                    answer = await http.post(f"{url}/event", json=body)
                except httpx.HTTPError:
                    return  # the server is gone: this event was not acknowledged
                if answer.status_code == 200:
                    acked.add(event_id)
                n += 1

    await asyncio.gather(*(client(c) for c in range(CLIENTS)))


async def retry_unacknowledged(url: str, event_ids: set[str]) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for event_id in sorted(event_ids):
            body = {"event_id": event_id, "input_summary": event_id, "success": True}
            assert (await http.post(f"{url}/event", json=body)).status_code == 200


@pytest.mark.usefixtures("prefect_server")
def test_kill_9_during_a_burst_loses_no_acknowledged_event(
    observer_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    acked: set[str] = set()
    sent: set[str] = set()
    first = WebhookProcess(observer_env, cwd=tmp_path)

    async def burst_then_kill() -> None:
        load = asyncio.create_task(burst(first.url, time.monotonic() + 30, acked, sent))
        while len(acked) < 300:  # well into the burst, requests in flight on every client
            await asyncio.sleep(0.05)
        first.kill(signal.SIGKILL)
        await load

    asyncio.run(burst_then_kill())
    first.stop()
    assert len(acked) >= 300

    second = WebhookProcess(observer_env, cwd=tmp_path)
    try:
        stats = httpx.get(f"{second.url}/stats").json()
        asyncio.run(retry_unacknowledged(second.url, sent - acked))  # what a client would do
    finally:
        second.stop()
    assert stats["total"] >= min(len(acked), 2000)

    ingest_events()
    lines = settings.layout.ops_path.read_bytes().splitlines()
    markers = [Op.model_validate_json(line).input_summary for line in lines]
    assert len(markers) == len(set(markers)), "an event reached ops.jsonl twice"
    assert acked <= set(markers), f"lost {len(acked - set(markers))} acknowledged event(s)"
    assert set(markers) == sent
