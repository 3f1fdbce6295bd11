"""The webhook as a real process under uvicorn on 127.0.0.1: contract shapes and every fix."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from observer.intake.spool import list_segments, segment_path, segment_records
from observer.pipelines.ingest import drain_spool
from observer.settings import Settings
from tests.fakes import WebhookProcess

GOLDEN = Path(__file__).parent / "golden"
SCENARIO = {"success": True, "event_kind": "fill", "role": "welder", "count": 2}


def spool_lines(settings: Settings) -> list[bytes]:
    return [
        line
        for segment in list_segments(settings.layout.spool_dir)
        for line in segment_records(segment_path(settings.layout.spool_dir, segment)).splitlines()
    ]


def test_event_is_acknowledged_durable_with_the_original_shape(
    webhook: WebhookProcess, settings: Settings
) -> None:
    answer = httpx.post(f"{webhook.url}/event", json=SCENARIO)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.content == b'{"accepted":true,"ring_size":1}'
    [record] = spool_lines(settings)
    assert b'"input_summary":"fill welder\xc3\x972 in ?, ?"' in record


def test_golden_events_give_the_original_lines_and_stats(
    webhook: WebhookProcess, settings: Settings
) -> None:
    for body in (GOLDEN / "event_bodies.jsonl").read_bytes().splitlines():
        assert httpx.post(f"{webhook.url}/event", content=body).status_code == 200
    drain_spool(settings)
    assert settings.layout.ops_path.read_bytes() == (GOLDEN / "original_ops.jsonl").read_bytes()
    stats = httpx.get(f"{webhook.url}/stats").json()
    assert stats == json.loads((GOLDEN / "original_stats.json").read_text())


BAD_REQUESTS = [
    ("POST", "/event", b"{not json", 400, "invalid JSON"),
    ("POST", "/event", b"null", 400, "JSON object"),
    ("POST", "/event", b"[{}]", 400, "JSON object"),
    ("POST", "/event", b'"x"', 400, "JSON object"),
    ("POST", "/event", b"7", 400, "JSON object"),
    ("POST", "/event", b'{"success":"yes please"}', 422, "success"),
    ("POST", "/event", b'{"duration_ms":"abc"}', 422, "duration_ms"),
    ("POST", "/event", b'{"endpoint":{"toString":1}}', 422, "endpoint"),
    ("POST", "/event", b"{" + b" " * (1024 * 1024) + b"}", 413, "1048576 bytes"),
    ("GET", "/nowhere", b"", 404, "no such path"),
    ("GET", "/event", b"", 405, "not allowed"),
    ("DELETE", "/stats", b"", 405, "not allowed"),
]


def test_bad_requests_get_a_clear_error_and_write_nothing(
    webhook: WebhookProcess, settings: Settings
) -> None:
    with httpx.Client() as client:
        for method, path, body, status, words in BAD_REQUESTS:
            answer = client.request(method, f"{webhook.url}{path}", content=body)
            case = f"{method} {path} {body[:30]!r}"
            assert answer.status_code == status, case
            assert answer.headers["content-type"] == "application/json", case
            assert words in answer.json()["error"], case
        assert spool_lines(settings) == []
        assert client.post(f"{webhook.url}/event", json=SCENARIO).status_code == 200
    assert len(spool_lines(settings)) == 1


def test_head_health_and_allow_header(webhook: WebhookProcess) -> None:
    head = httpx.head(f"{webhook.url}/health")
    assert head.status_code == 200 and head.content == b""
    assert httpx.get(f"{webhook.url}/event").headers["allow"] == "POST"


def test_a_retried_event_id_is_stored_once(webhook: WebhookProcess, settings: Settings) -> None:
    first = httpx.post(f"{webhook.url}/event", json={**SCENARIO, "event_id": "retry-1"})
    again = httpx.post(f"{webhook.url}/event", json={**SCENARIO, "event_id": "retry-1"})
    assert first.json() == {"accepted": True, "ring_size": 1}
    assert again.json() == {"accepted": True, "ring_size": 1, "duplicate": True}
    assert len(spool_lines(settings)) == 1


def test_stats_survive_a_restart_and_count_sources_as_strings(
    observer_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    first = WebhookProcess(observer_env, cwd=tmp_path)
    try:
        for source in ("scenario", "5", "langfuse", "scenario"):
            httpx.post(f"{first.url}/event", json={**SCENARIO, "source": source})
        httpx.post(f"{first.url}/event", json={"success": False, "event_id": "kept-id"})
        before = httpx.get(f"{first.url}/stats").json()
    finally:
        first.stop()
    drain_spool(settings)  # part of it ingested, the rest would still be spooled: both count
    second = WebhookProcess(observer_env, cwd=tmp_path)
    try:
        after = httpx.get(f"{second.url}/stats").json()
        duplicate = httpx.post(
            f"{second.url}/event", json={"success": False, "event_id": "kept-id"}
        )
    finally:
        second.stop()
    assert after == before
    assert sum(after["by_source"].values()) == after["total"] == 5
    assert after["by_source"] == {"scenario": 3, "5": 1, "langfuse": 1}
    assert duplicate.json()["duplicate"] is True


def test_window_keeps_the_last_2000(webhook: WebhookProcess) -> None:
    with httpx.Client() as client:
        for n in range(2005):
            answer = client.post(f"{webhook.url}/event", json={"success": n % 2 == 0})
        assert answer.json() == {"accepted": True, "ring_size": 2000}
        stats = client.get(f"{webhook.url}/stats").json()
        health = client.get(f"{webhook.url}/health").json()
    assert stats["total"] == 2000 and stats["successes"] == 1000 and stats["failures"] == 1000
    assert health["status"] == "ok" and health["ops_in_ring"] == 2000


def test_ops_recorded_by_other_processes_count_in_stats(
    webhook: WebhookProcess, settings: Settings
) -> None:
    from observer.intake import record_ops
    from observer.ops import Op

    httpx.post(f"{webhook.url}/event", json=SCENARIO)
    correction = Op(
        timestamp="2026-04-23T10:00:00.000Z",
        endpoint="overseer:gpt-oss:120b",
        input_summary="staffing.fill: drift",
        success=True,
        duration_ms=0,
        output_summary="use the roster",
        source="overseer_correction",
    )
    record_ops(settings, [("corr-1", correction)])
    stats = httpx.get(f"{webhook.url}/stats").json()
    assert stats["by_source"] == {"scenario": 1, "overseer_correction": 1}
    assert httpx.post(f"{webhook.url}/event", json=SCENARIO).json()["ring_size"] == 3


def test_disk_full_is_a_503_with_retry_after_and_the_service_recovers(
    webhook: WebhookProcess, settings: Settings
) -> None:
    assert httpx.post(f"{webhook.url}/event", json=SCENARIO).status_code == 200
    full = segment_path(settings.layout.spool_dir, 2)
    full.symlink_to("/dev/full")
    try:
        refused = httpx.post(f"{webhook.url}/event", json={**SCENARIO, "event_id": "later"})
    finally:
        full.unlink()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "No space left" in refused.json()["error"]
    retried = httpx.post(f"{webhook.url}/event", json={**SCENARIO, "event_id": "later"})
    assert retried.json() == {"accepted": True, "ring_size": 2}
    assert len(spool_lines(settings)) == 2


def test_bearer_token_protects_everything_but_health(
    observer_env: dict[str, str], tmp_path: Path
) -> None:
    process = WebhookProcess({**observer_env, "OBSERVER_TOKEN": "s3cret"}, cwd=tmp_path)
    try:
        assert httpx.get(f"{process.url}/health").status_code == 200
        assert httpx.get(f"{process.url}/stats").status_code == 401
        wrong = httpx.post(
            f"{process.url}/event", json=SCENARIO, headers={"authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = httpx.post(
            f"{process.url}/event", json=SCENARIO, headers={"authorization": "Bearer s3cret"}
        )
        assert right.status_code == 200
    finally:
        process.stop()


def test_overload_is_a_503_with_retry_after_and_memory_stays_bounded(
    observer_env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    import asyncio

    process = WebhookProcess({**observer_env, "OBSERVER_MAX_PENDING": "1"}, cwd=tmp_path)

    async def blast() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        timeout = httpx.Timeout(30, pool=None)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            posts = [
                client.post(f"{process.url}/event", json={"input_summary": f"e{n}"})
                for n in range(640)
            ]
            return await asyncio.gather(*posts)

    try:
        answers = asyncio.run(blast())
        assert httpx.get(f"{process.url}/health").status_code == 200
    finally:
        process.stop()
    accepted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 503]
    assert len(accepted) + len(refused) == len(answers)
    assert refused, "64 concurrent clients against a queue of 1 must be refused sometimes"
    assert all(a.headers["retry-after"] == "1" for a in refused)
    assert len(spool_lines(settings)) == len(accepted)
