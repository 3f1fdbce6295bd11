"""`POST /events`: a batch of events in one request, one write and one fsync, one result per event."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from observer.pipelines.ingest import drain_spool
from observer.settings import Settings
from observer.webhook.app import WebhookApp
from tests.fakes import FailingFsync, WebhookProcess, spool_records

NDJSON = {"content-type": "application/x-ndjson"}
STAMP = "2026-04-23T10:00:00.123Z"


def ndjson(events: list[Any]) -> bytes:
    return b"".join(orjson.dumps(event) + b"\n" for event in events)


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {"timestamp": STAMP, "input_summary": f"e{n}", "success": n % 2 == 0, **extra}


def stored_ids(settings: Settings) -> list[str]:
    return [record.partition(b"\t")[0].decode() for record in spool_records(settings)]


def test_a_mixed_batch_keeps_the_valid_events_and_answers_each_in_order(
    webhook: WebhookProcess, settings: Settings
) -> None:
    batch = [
        event(0, event_id="a"),
        {"count": "many", "success": "perhaps"},
        event(1, event_id="a"),  # the same id again in this batch
        [1, 2],
        event(2),
    ]
    answer = httpx.post(f"{webhook.url}/events", json=batch)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert {k: body[k] for k in ("accepted", "duplicates", "rejected", "ring_size")} == {
        "accepted": 2,
        "duplicates": 1,
        "rejected": 2,
        "ring_size": 2,
    }
    accepted, invalid, duplicate, not_an_object, last = body["results"]
    assert accepted == last == {"accepted": True}
    assert duplicate == {"accepted": True, "duplicate": True}
    assert invalid["accepted"] is False and invalid["index"] == 1 and invalid["status"] == 422
    assert [d["field"] for d in invalid["details"]] == ["success", "count"]
    assert invalid["error"].startswith("invalid event: success: must be a boolean")
    assert not_an_object == {
        "accepted": False,
        "index": 3,
        "status": 400,
        "error": "an event must be a JSON object, got an array",
    }
    lines = [orjson.loads(r.partition(b"\t")[2]) for r in spool_records(settings)]
    assert [line["input_summary"] for line in lines] == ["e0", "e2"]
    assert httpx.get(f"{webhook.url}/stats").json()["total"] == 2


def test_duplicates_across_batches_and_single_events_are_stored_once(
    webhook: WebhookProcess, settings: Settings
) -> None:
    with httpx.Client(base_url=webhook.url) as client:
        first = client.post("/events", json=[event(0, event_id="a"), event(1, event_id="b")])
        single = client.post("/event", json=event(2, event_id="c"))
        again = client.post(
            "/events",
            content=ndjson(
                [event(3, event_id="b"), event(4, event_id="c"), event(5, event_id="d")]
            ),
            headers=NDJSON,
        )
        retried = client.post("/event", json=event(6, event_id="d"))
    assert first.json()["results"] == [{"accepted": True}, {"accepted": True}]
    assert single.json() == {"accepted": True, "ring_size": 3}
    assert again.json() == {
        "accepted": 1,
        "duplicates": 2,
        "rejected": 0,
        "ring_size": 4,
        "results": [
            {"accepted": True, "duplicate": True},
            {"accepted": True, "duplicate": True},
            {"accepted": True},
        ],
    }
    assert retried.json() == {"accepted": True, "ring_size": 4, "duplicate": True}
    assert stored_ids(settings) == ["a", "b", "c", "d"]


def test_empty_batches_are_answered_without_writing(
    webhook: WebhookProcess, settings: Settings
) -> None:
    empty = {"accepted": 0, "duplicates": 0, "rejected": 0, "ring_size": 0, "results": []}
    assert httpx.post(f"{webhook.url}/events", content=b"[]").json() == empty
    assert httpx.post(f"{webhook.url}/events", content=b"\n \n", headers=NDJSON).json() == empty
    assert spool_records(settings) == []


def test_bodies_that_are_no_batch_are_refused_and_write_nothing(
    observer_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    process = WebhookProcess({**observer_env, "OBSERVER_MAX_BATCH": "3"}, cwd=tmp_path)
    try:
        with httpx.Client(base_url=process.url) as client:
            over = client.post("/events", json=[event(n) for n in range(4)])
            over_ndjson = client.post(
                "/events", content=ndjson([event(n) for n in range(4)]), headers=NDJSON
            )
            an_object = client.post("/events", json=event(0))
            not_json = client.post("/events", content=ndjson([event(0), event(1)]))
            at_the_limit = client.post("/events", json=[event(n) for n in range(3)])
    finally:
        process.stop()
    for answer in (over, over_ndjson):
        assert answer.status_code == 413
        assert answer.json()["error"] == (
            "a batch holds at most 3 events (OBSERVER_MAX_BATCH), got 4"
        )
    assert an_object.status_code == 400
    assert an_object.json()["error"] == "the body must be a JSON array of events, got an object"
    assert not_json.status_code == 400
    assert "Content-Type: application/x-ndjson" in not_json.json()["error"]
    assert at_the_limit.json()["accepted"] == 3
    assert len(spool_records(settings)) == 3


def test_ndjson_with_a_bad_line_keeps_the_other_lines(
    webhook: WebhookProcess, settings: Settings
) -> None:
    body = (
        ndjson([event(0)]) + b'{"success": tru\n\xff\n' + ndjson([event(1)]).replace(b"\n", b"\r\n")
    )
    answer = httpx.post(f"{webhook.url}/events", content=body, headers=NDJSON).json()
    assert answer["accepted"] == 2 and answer["rejected"] == 2
    first, bad_json, bad_utf8, last = answer["results"]
    assert first == last == {"accepted": True}
    assert (bad_json["index"], bad_json["status"]) == (1, 400)
    assert bad_json["error"].startswith("invalid JSON")
    assert (bad_utf8["index"], bad_utf8["status"]) == (2, 400)
    assert len(spool_records(settings)) == 2


def test_an_array_and_ndjson_give_the_same_lines_as_single_events(
    webhook: WebhookProcess, settings: Settings
) -> None:
    golden = Path(__file__).parent / "golden"
    bodies = (golden / "event_bodies.jsonl").read_bytes().splitlines()
    events = [orjson.loads(body) for body in bodies]
    with httpx.Client(base_url=webhook.url) as client:
        as_array = client.post("/events", content=b"[" + b",".join(bodies) + b"]")
        as_ndjson = client.post("/events", content=b"\n".join(bodies), headers=NDJSON)
    assert as_array.json()["accepted"] == as_ndjson.json()["accepted"] == len(events)
    drain_spool(settings)
    lines = settings.layout.ops_path.read_bytes().splitlines()
    original = (golden / "original_ops.jsonl").read_bytes().splitlines()
    assert lines == original + original


def test_a_token_protects_events_too(observer_env: dict[str, str], tmp_path: Path) -> None:
    process = WebhookProcess({**observer_env, "OBSERVER_TOKEN": "s3cret"}, cwd=tmp_path)
    try:
        refused = httpx.post(f"{process.url}/events", json=[event(0)])
        taken = httpx.post(
            f"{process.url}/events", json=[event(0)], headers={"authorization": "Bearer s3cret"}
        )
    finally:
        process.stop()
    assert refused.status_code == 401
    assert taken.json()["accepted"] == 1


def test_a_batch_the_disk_cannot_take_is_a_503_and_nothing_of_it_is_kept(
    webhook: WebhookProcess, settings: Settings
) -> None:
    batch = [event(n, event_id=f"id-{n}") for n in range(5)]
    assert httpx.post(f"{webhook.url}/event", json=event(9)).status_code == 200
    full = settings.layout.spool_dir / "000000000002.jsonl"
    full.symlink_to("/dev/full")
    try:
        refused = httpx.post(f"{webhook.url}/events", json=batch)
    finally:
        full.unlink()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "No space left" in refused.json()["error"]
    assert len(spool_records(settings)) == 1
    retried = httpx.post(f"{webhook.url}/events", json=batch).json()
    assert retried["accepted"] == 5 and retried["duplicates"] == 0
    assert stored_ids(settings) == ["", *(f"id-{n}" for n in range(5))]


def test_a_failed_fsync_refuses_the_whole_batch(settings: Settings) -> None:
    """Through the ASGI app in this process, with the fsync failing."""
    app = WebhookApp(settings)
    batch = [event(n, event_id=f"id-{n}") for n in range(3)]

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        app.ledger.open()
        app.intake.open()
        helper, app.intake._syncer = app.intake._syncer, FailingFsync(app.intake)  # type: ignore[assignment]
        assert helper is not None
        helper.stop()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            refused = await client.post("/events", json=batch)
            app.intake._syncer = None  # fsync inline from here on: the disk works again
            retried = await client.post("/events", json=batch)
        app.intake.close()
        return refused, retried

    refused, retried = asyncio.run(scenario())
    assert refused.status_code == 503 and "cannot write the spool" in refused.json()["error"]
    assert retried.json()["accepted"] == 3
    assert stored_ids(settings) == ["id-0", "id-1", "id-2"]


CLIENTS = 8
BATCH = 20


@pytest.mark.timeout(90)
def test_kill_9_during_batches_loses_no_accepted_event(
    observer_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    """Every event answered accepted is in ops.jsonl exactly once after ingestion."""
    accepted: set[str] = set()
    sent: list[list[dict[str, Any]]] = []
    first = WebhookProcess(observer_env, cwd=tmp_path)

    async def client(number: int, stop_at: float) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            n = 0
            while time.monotonic() < stop_at:
                batch = [
                    {"event_id": f"c{number}-{n}-{i}", "input_summary": f"c{number}-{n}-{i}"}
                    for i in range(BATCH)
                ]
                sent.append(batch)
                try:
                    answer = await http.post(f"{first.url}/events", json=batch)
                except httpx.HTTPError:
                    return  # the server is gone: this batch was not answered
                if answer.status_code == 200:
                    results = answer.json()["results"]
                    accepted.update(
                        e["event_id"] for e, r in zip(batch, results, strict=True) if r["accepted"]
                    )
                n += 1

    async def batches_then_kill() -> None:
        stop_at = time.monotonic() + 30
        load = asyncio.gather(*(client(c, stop_at) for c in range(CLIENTS)))
        while len(accepted) < 20 * BATCH:
            await asyncio.sleep(0.02)
        first.kill(signal.SIGKILL)
        await load

    asyncio.run(batches_then_kill())
    first.stop()
    assert len(accepted) >= 20 * BATCH

    second = WebhookProcess(observer_env, cwd=tmp_path)
    try:
        with httpx.Client(base_url=second.url, timeout=10) as http:
            for batch in sent:  # what a client would do: send again what got no answer
                assert http.post("/events", json=batch).status_code == 200
    finally:
        second.stop()
    drain_spool(settings)
    lines = [orjson.loads(line) for line in settings.layout.ops_path.read_bytes().splitlines()]
    markers = [line["input_summary"] for line in lines]
    assert len(markers) == len(set(markers)), "an event reached ops.jsonl twice"
    assert accepted <= set(markers), f"lost {len(accepted - set(markers))} accepted event(s)"
    assert set(markers) == {e["event_id"] for batch in sent for e in batch}
