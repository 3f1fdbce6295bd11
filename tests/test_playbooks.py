"""Playbook consolidation: the evidence and body (library), and the flow against a real Prefect
server and a fake gateway on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from flows.consolidate_playbooks import consolidate_playbooks
from observer.files import load_state, read_tail
from observer.ops import Op
from observer.pipelines.playbooks import (
    ConsolidateParameters,
    PlaybookState,
    build_playbook,
    window_charts,
)
from observer.settings import Settings
from tests.fakes import FakeUpstream, Hang, Reply
from tests.rendered import as_html, shown

GOLDEN = Path(__file__).parent / "golden"
Spec = tuple[str, float, bool]  # endpoint, duration_ms, success


def _write(settings: Settings, specs: Iterable[Spec], *, append: bool = True) -> None:
    """Ops as ingestion writes them into ops.jsonl (one per line, in order)."""
    path = settings.layout.ops_path
    path.parent.mkdir(parents=True, exist_ok=True)
    start = len(path.read_bytes().splitlines()) if append and path.exists() else 0
    lines = [
        Op(
            timestamp=f"2026-04-23T10:{(start + i) // 60:02d}:{(start + i) % 60:02d}.000Z",
            endpoint=endpoint,
            input_summary=f"{endpoint} input {start + i}",
            success=success,
            duration_ms=duration,
            output_summary="ok" if success else "failed",
            source="mcp",
        ).to_line()
        + b"\n"
        for i, (endpoint, duration, success) in enumerate(specs)
    ]
    with open(path, "ab" if append else "wb") as handle:
        handle.write(b"".join(lines))


def _ok(endpoint: str, *durations: float) -> list[Spec]:
    return [(endpoint, d, True) for d in durations]


def _posted(gateway: FakeUpstream) -> dict[str, dict[str, Any]]:
    return {seen.body["context"]: seen.body for seen in gateway.seen("/log")}


def _actions(settings: Settings, **params: Any) -> dict[str, str]:
    playbook = build_playbook(settings, ConsolidateParameters(**params))
    return {p.evidence.endpoint: p.action for p in playbook.entries}


# ── library: thresholds, rounding, the body, the window ─────────────────────────────────────────


def test_endpoint_threshold_two_vs_three(settings: Settings) -> None:
    _write(settings, _ok("a", 1, 1) + _ok("b", 1, 1, 1))

    assert _actions(settings) == {"a": "below-threshold", "b": "post"}


def test_overall_threshold_four_vs_five(settings: Settings) -> None:
    _write(settings, [*_ok("a", 1, 1, 1, 1), ("a", 1, False)])
    assert _actions(settings) == {"a": "below-threshold"}

    _write(settings, _ok("b", 1))
    assert _actions(settings) == {"a": "post", "b": "below-threshold"}
    assert _actions(settings, min_successes_overall=6) == {
        "a": "below-threshold",
        "b": "below-threshold",
    }


@pytest.mark.parametrize(
    ("durations", "shown"),
    [((2, 3, 2.5), "3"), ((10, 11, 10.5), "11"), ((1, 2, 3, 4), "3"), ((0.1, 0.2, 0.3), "0")],
)
def test_mean_rounds_half_up_like_to_fixed(
    settings: Settings, durations: tuple[float, ...], shown: str
) -> None:
    _write(settings, _ok("e", *durations) + _ok("f", 1, 1))

    entry = build_playbook(settings, ConsolidateParameters()).entries[0].entry

    assert entry.result.startswith(f"avg_duration={shown}ms, {len(durations)} successes | ")


def test_body_is_the_original_plus_evidence_after_result(settings: Settings) -> None:
    _write(settings, [*_ok("/search", 10, 20), ("/search", 5, False), *_ok("/search", 30, 40)])

    planned = build_playbook(settings, ConsolidateParameters()).entries[0]

    assert planned.entry.model_dump() == {
        "operation": "consolidated: 4 successful /search calls",
        "approach": "common pattern: /search input 1; /search input 3; /search input 4",
        "result": "avg_duration=25ms, 4 successes | success_rate=80.0% (4/5), p50=25ms,"
        " p95=39ms, first_seen=2026-04-23T10:00:00.000Z, last_seen=2026-04-23T10:00:04.000Z",
        "context": "endpoint=/search",
    }


def test_bodies_match_the_original(settings: Settings) -> None:
    """The original (Bun, OBSERVER_CYCLE=1) was sent 25 events with chosen endpoints and durations
    (2, 3, 2.5 → 3; 10, 11, 10.5 → 11; 0.1, 0.2, 0.3 → 0; a failure; an emoji name; 150-character
    inputs); `original_playbook_ops.jsonl` is the ops.jsonl it wrote, `original_playbook_posts.jsonl`
    the /log bodies it posted five cycles later."""
    settings.layout.ops_path.parent.mkdir(parents=True)
    settings.layout.ops_path.write_bytes((GOLDEN / "original_playbook_ops.jsonl").read_bytes())
    expected = [json.loads(line) for line in (GOLDEN / "original_playbook_posts.jsonl").open()]

    planned = build_playbook(settings, ConsolidateParameters()).to_post
    bodies = [p.entry.model_dump() for p in planned]
    for body in bodies:
        body["result"] = body["result"].split(" | ")[0]

    assert bodies == expected


def test_pattern_is_cut_to_200_characters(settings: Settings) -> None:
    long = "é" * 150
    lines = [
        Op(
            timestamp="t",
            endpoint="x",
            input_summary=long,
            success=True,
            duration_ms=1,
            output_summary="",
        ).to_line()
        for _ in range(5)
    ]
    settings.layout.ops_path.parent.mkdir(parents=True)
    settings.layout.ops_path.write_bytes(b"\n".join(lines) + b"\n")

    approach = build_playbook(settings, ConsolidateParameters()).entries[0].entry.approach

    assert approach == "common pattern: " + (f"{long}; {long}; {long}")[:200]


def test_window_is_the_tail_and_bad_lines_are_skipped(settings: Settings) -> None:
    _write(settings, _ok("old", 1, 1, 1, 1, 1))
    with open(settings.layout.ops_path, "ab") as handle:
        handle.write(b'not json\nnull\n{"endpoint":"new","success":"false","duration_ms":"x"}\n')
    _write(settings, _ok("new", 1, 1, 1, 1, 1))
    with open(settings.layout.ops_path, "ab") as handle:
        handle.write(b'{"endpoint":"torn"')  # not complete yet: left for the next run

    playbook = build_playbook(settings, ConsolidateParameters(window_ops=8))

    assert {p.evidence.endpoint: p.evidence.total for p in playbook.entries} == {"new": 6}
    assert (playbook.ops_in_window, playbook.malformed_lines) == (6, 2)
    tail = read_tail(settings.layout.ops_path, 8)
    assert tail.end == settings.layout.ops_path.stat().st_size - len(b'{"endpoint":"torn"')


def test_strange_endpoint_names(settings: Settings) -> None:
    names = ["__proto__", "constructor", "toString", "🚀 launch", "a|b_*c*"]
    _write(settings, [spec for name in names for spec in _ok(name, 1, 2, 3)])

    assert _actions(settings) == dict.fromkeys(names, "post")


# ── the flow: posting, remembering, re-posting, failing honestly ───────────────────────────────


def _artifact(key: str) -> str:
    """The latest artifact of `key` as the Prefect API stores it."""

    async def read() -> str:
        async with get_client() as client:
            artifacts = await client.read_latest_artifacts()
        return next(a.data for a in artifacts if a.key == key)

    return asyncio.run(read())


@pytest.mark.usefixtures("prefect_server")
def test_posts_once_then_only_what_changed(gateway: FakeUpstream, settings: Settings) -> None:
    names = ["__proto__", "constructor", "🚀"]
    _write(settings, [spec for name in names for spec in _ok(name, 1, 2, 3)])

    first = consolidate_playbooks()

    assert set(_posted(gateway)) == {f"endpoint={n}" for n in names}
    assert first.status == dict.fromkeys(names, "posted")
    assert set(load_state(settings.layout.playbooks_state, PlaybookState).endpoints) == set(names)
    table = json.loads(_artifact("consolidate-playbooks"))
    assert {row["endpoint"]: row["status"] for row in table} == dict.fromkeys(names, "posted")
    changes = as_html(_artifact("consolidate-playbooks-changes"))
    assert "<td>__proto__</td>" in changes and "<strong>" not in changes

    gateway.requests.clear()
    consolidate_playbooks()
    assert gateway.seen("/log") == []  # a quiet system posts nothing

    _write(settings, [*_ok("constructor", 9), ("🚀", 1, False)])
    again = consolidate_playbooks()
    assert list(_posted(gateway)) == ["endpoint=constructor"]
    assert _posted(gateway)["endpoint=constructor"]["operation"] == (
        "consolidated: 4 successful constructor calls"
    )
    assert again.status["🚀"] == "unchanged"
    assert "1 new success(es)" in shown(_artifact("consolidate-playbooks-changes"))


@pytest.mark.usefixtures("prefect_server")
def test_dry_run_and_force(gateway: FakeUpstream, settings: Settings) -> None:
    _write(settings, _ok("a", 1, 1, 1) + _ok("b", 1, 1, 1))
    dry = consolidate_playbooks(ConsolidateParameters(dry_run=True))
    assert gateway.seen("/log") == [] and dry.status == {"a": "would post", "b": "would post"}
    assert not settings.layout.playbooks_state.exists()

    consolidate_playbooks()
    forced = consolidate_playbooks(ConsolidateParameters(force=True))
    assert len(gateway.seen("/log")) == 4 and forced.status == {"a": "posted", "b": "posted"}


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    "failure", [Reply(500, {"error": "down"}), Hang(5)], ids=["http-500", "hang"]
)
def test_gateway_failure_fails_the_run_and_marks_nothing_undelivered(
    gateway: FakeUpstream,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    failure: Reply | Hang,
) -> None:
    monkeypatch.setenv("OBSERVER_HTTP_TIMEOUT", "0.3")
    _write(settings, _ok("first", 1, 1, 1) + _ok("second", 1, 1, 1) + _ok("third", 1, 1, 1))
    gateway.script("/log", Reply(200, {}), failure, failure, failure)

    state = consolidate_playbooks(return_state=True)

    assert state.is_failed()
    assert len(gateway.seen("/log")) == 1 + 3  # one delivered, then 3 attempts at the second
    remembered = load_state(settings.layout.playbooks_state, PlaybookState).endpoints
    assert list(remembered) == ["first"]
    changes = _artifact("consolidate-playbooks-changes")
    assert "failed" in changes and "not attempted" in changes

    gateway.requests.clear()
    retried = consolidate_playbooks()  # the gateway is back: the rest is posted, not the first
    assert list(_posted(gateway)) == ["endpoint=second", "endpoint=third"]
    assert retried.count("posted") == 2


@pytest.mark.usefixtures("prefect_server")
def test_the_changes_artifact_draws_success_rate_and_latency_per_endpoint(
    gateway: FakeUpstream, settings: Settings
) -> None:
    _write(
        settings, [*_ok("fast", 10, 20, 30, 40), ("fast", 5, False), *_ok("slow", 100, 300, 500)]
    )
    _write(settings, [("broken", 7, False)] * 2)
    consolidate_playbooks()
    page = _artifact("consolidate-playbooks-changes")
    images = re.findall(r"!\[[^\]]*\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", page)
    playbook = build_playbook(settings, ConsolidateParameters())
    charts = [chart for _, chart in window_charts(playbook.endpoints)]
    assert [base64.b64decode(image).decode() for image in images] == [c.svg() for c in charts]
    rates, latency = (chart.table() for chart in charts)
    assert rates.rows == (
        ("fast (4/5)", "80.0%"),
        ("slow (3/3)", "100.0%"),
        ("broken (0/2)", "0.0%"),
    )
    assert latency.rows == (("fast", "25 ms", "38.5 ms"), ("slow", "300 ms", "480 ms"))
    for chart in charts:
        assert chart.table().markdown() in page
