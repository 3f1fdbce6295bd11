"""The webhook wakes ingestion through Prefect: a real event on the real API server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from observer.catalog import SPOOL_APPENDED_EVENT, SPOOL_RESOURCE_ID
from observer.instance import Instance
from observer.webhook.notify import due_runs_query
from tests.fakes import WebhookProcess


def spool_events(api_url: str) -> list[dict[str, object]]:
    query = {"filter": {"event": {"name": [SPOOL_APPENDED_EVENT]}}, "limit": 50}
    answer = httpx.post(f"{api_url}/events/filter", json=query)
    answer.raise_for_status()
    return answer.json()["events"]


@pytest.mark.usefixtures("prefect_server")
def test_an_acknowledged_event_wakes_ingestion_through_prefect(
    observer_env: dict[str, str], tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    before = len(spool_events(api_url))
    process = WebhookProcess({**observer_env, "PREFECT_API_URL": api_url}, cwd=tmp_path)
    try:
        assert httpx.post(f"{process.url}/event", json={"success": True}).status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(spool_events(api_url)) == before:
            time.sleep(0.2)
        health = httpx.get(f"{process.url}/health").json()
    finally:
        process.stop()
    events = spool_events(api_url)
    assert len(events) > before, "the webhook did not tell Prefect about the new record"
    assert events[0]["resource"]["prefect.resource.id"] == SPOOL_RESOURCE_ID
    assert health["ingest"]["spool_bytes_waiting"] > 0  # nothing ingested it in this test


@pytest.mark.usefixtures("prefect_server")
def test_the_due_run_query_is_one_the_prefect_api_accepts() -> None:
    from prefect.settings import PREFECT_API_URL

    answer = httpx.post(
        f"{PREFECT_API_URL.value()}/flow_runs/filter", json=due_runs_query(Instance())
    )
    assert answer.status_code == 200
    # What it finds depends on the session (a worker may be taking a run meanwhile): only ever
    # runs waiting to start.
    assert all(run["state"]["type"] in ("SCHEDULED", "PENDING") for run in answer.json())
