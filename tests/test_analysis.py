"""analyze-errors: grouping, once per failure, bounded prompts, honest when the LLM or gateway fails.

Flow tests run against the real Prefect test server, with real files and the fake LLM and gateway
as real HTTP servers on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from prefect.client.orchestration import get_client
from prefect.states import State

from flows.analyze_errors import analyze_errors
from observer.charts import MAX_SVG_BYTES
from observer.files import load_state, read_tail
from observer.ops import Op
from observer.pipelines import analysis, analysis_charts
from observer.pipelines.analysis import (
    DEGRADED_APPROACH,
    LLM_APPROACH,
    MAX_PROMPT_CHARS,
    AnalysisReport,
    AnalysisState,
    AnalyzeParameters,
)
from observer.pipelines.failures import FIRST_RUN_LINES
from observer.pipelines.grouping import clean_cut, normalise_error
from observer.settings import Settings
from tests.fakes import Drop, FakeUpstream, Hang, Reply
from tests.rendered import shown

DIAGNOSIS = "Retry with a smaller batch; add 'do not call fill without a city' to the playbook."


def failure(
    error: str, endpoint: str = "scenario:fill", n: int = 0, source: str = "scenario"
) -> Op:
    return Op(
        timestamp=f"2099-01-01T00:00:{n % 60:02d}.000Z",
        endpoint=endpoint,
        input_summary=f"fill welder×{n} in Austin, TX",
        success=False,
        duration_ms=n,
        output_summary=error,
        error=error,
        source=source,
    )


def success(n: int = 0) -> Op:
    return Op(
        timestamp="2099-01-01T00:00:00.000Z",
        endpoint="scenario:fill",
        input_summary="ok",
        success=True,
        duration_ms=n,
        output_summary="filled",
        source="scenario",
    )


def append(settings: Settings, ops: list[Op] | list[bytes]) -> None:
    settings.layout.ops_path.parent.mkdir(parents=True, exist_ok=True)
    lines = [op if isinstance(op, bytes) else op.to_line() for op in ops]
    with open(settings.layout.ops_path, "ab") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))


def run(**params: Any) -> State:
    return analyze_errors(AnalyzeParameters(**params), return_state=True)


def posts(gateway: FakeUpstream) -> list[dict[str, Any]]:
    return [request.body for request in gateway.seen("/log")]


def prompts(llm: FakeUpstream) -> list[str]:
    return [request.body["prompt"] for request in llm.seen("/ai/generate")]


@pytest.fixture
def answering_llm(llm: FakeUpstream) -> FakeUpstream:
    llm.default("/ai/generate", Reply(200, {"text": DIAGNOSIS}))
    return llm


# ── the normaliser and safe cuts (no Prefect) ────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        ("timeout after 30s calling /ai/generate", "timeout after <num>s calling <path>"),
        ('staffer "Bob Smith" not found', "staffer <str> not found"),
        ("staffer 'Ann' not found", "staffer <str> not found"),
        ("can't fill: no rows", "can't fill: no rows"),
        ("id=5f3c9a2b-1111-2222-3333-444455556666 gone", "id=<uuid> gone"),
        ("cannot reach 10.0.0.5:8080", "cannot reach <ip>"),
        ("at 2026-04-23T10:00:00.123Z retry", "at <ts> retry"),
        ("segfault at 0xdeadbeef", "segfault at <hex>"),
        ("sha deadbeefcafe1234 mismatch", "sha <hex> mismatch"),
        ("row req_123456 failed", "row <id> failed"),
        ("open C:\\data\\x.csv failed", "open <path> failed"),
        ("GET https://lake.local/q?id=7 down", "GET <url> down"),
        ("mail bob@example.com bounced", "mail <email> bounced"),
        ("HTTP 500:   internal\n error", "HTTP <num>: internal error"),
    ],
)
def test_normaliser_replaces_variable_parts(message: str, pattern: str) -> None:
    assert normalise_error(message) == pattern


def test_normaliser_groups_messages_that_differ_only_in_values() -> None:
    one = normalise_error("staffer 4411 not found in /data/a.csv after 3 tries")
    two = normalise_error("staffer 97 not found in /data/b.csv after 12 tries")
    assert one == two
    assert normalise_error("x" * 1000) == "x" * 240


def test_clean_cut_keeps_characters_whole() -> None:
    emoji = "😀" * 600
    assert clean_cut(emoji, 500) == "😀" * 500
    paired = "\ud83d\ude00" * 3  # a surrogate pair as two code points (Python json of UTF-16 data)
    assert clean_cut(paired, 500) == "😀" * 3
    assert clean_cut("a\ud83db", 10) == "a\ufffdb"
    family = "👨\u200d👩\u200d👧"
    assert clean_cut(family, 2) == "👨"
    clean_cut(paired + "x\udc00", 500).encode()  # always encodable


def test_tail_start_counts_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "ops.jsonl"
    path.write_bytes(b"a\nbb\nccc\n")
    assert read_tail(path, 2).start == 2
    assert read_tail(path, 3).start == 0
    assert read_tail(path, 10).start == 0
    assert read_tail(tmp_path / "missing", 10).start == 0


def test_scheduled_reads_only_new_bytes_and_notices_a_replaced_file(settings: Settings) -> None:
    append(settings, [success(n) for n in range(FIRST_RUN_LINES + 500)])
    first = analysis.select(settings, AnalyzeParameters())
    assert first.start == read_tail(settings.layout.ops_path, FIRST_RUN_LINES).start
    analysis.commit(settings, first, analysis.Diagnosis(kind="nothing", message=""))
    append(settings, [failure("boom", n=1)])
    second = analysis.select(settings, AnalyzeParameters())
    assert (second.start, second.failures) == (first.end, 1)
    settings.layout.ops_path.write_bytes(
        failure("other", n=2).to_line() + b"\n"
    )  # replaced, shorter
    third = analysis.select(settings, AnalyzeParameters())
    assert third.start == 0 and "replaced" in third.note
    assert [g.pattern for g in third.fresh] == ["other"]


# ── the flow ─────────────────────────────────────────────────────────────────────────────────────

needs_prefect = pytest.mark.usefixtures("prefect_server")


@needs_prefect
def test_posts_once_then_only_new_groups(
    settings: Settings, answering_llm: FakeUpstream, gateway: FakeUpstream
) -> None:
    append(settings, [failure(f"staffer {n} not found", n=n) for n in range(5)] + [success()])
    append(settings, [failure("timeout after 30s", endpoint="hybrid:search")])

    first = run()
    assert first.is_completed(), first.message
    [entry] = posts(gateway)
    assert entry == {
        "operation": "error_analysis: 6 failures",
        "approach": LLM_APPROACH,
        "result": DIAGNOSIS,
        "context": entry["context"],
    }
    assert entry["context"].startswith("[scenario:fill] fill welder×4 in Austin, TX: staffer 4")
    [prompt] = prompts(answering_llm)
    assert prompt.startswith(analysis.PROMPT_HEAD) and prompt.endswith(analysis.PROMPT_TAIL)
    assert answering_llm.seen("/ai/generate")[0].body["model"] == "qwen2.5"

    assert run().is_completed()  # nothing new
    append(settings, [failure("staffer 77 not found", n=77)])  # a known group again
    again = run()
    assert "no new failure groups" in again.message
    assert len(posts(gateway)) == 1 and len(prompts(answering_llm)) == 1

    append(settings, [failure("quota exceeded for model x", n=9)])
    assert run().is_completed()
    assert len(posts(gateway)) == 2
    assert "quota exceeded" in prompts(answering_llm)[1]
    assert "staffer" not in prompts(answering_llm)[1]
    assert posts(gateway)[1]["operation"] == "error_analysis: 1 failures"


@needs_prefect
def test_force_reposts_and_dry_run_posts_nothing(
    settings: Settings, answering_llm: FakeUpstream, gateway: FakeUpstream
) -> None:
    append(settings, [failure("boom 1", n=1), failure("boom 2", n=2)])
    dry = run(dry_run=True)
    assert dry.is_completed() and "dry run" in dry.message
    assert posts(gateway) == []
    assert load_state(settings.layout.analysis_state, AnalysisState).watermark is None

    assert run().is_completed()
    assert run().is_completed()
    assert len(posts(gateway)) == 1

    forced = run(force=True)
    assert forced.is_completed(), forced.message
    assert len(posts(gateway)) == 2
    assert posts(gateway)[1]["operation"] == "error_analysis: 2 failures"
    assert len(prompts(answering_llm)) == 2  # force asks the LLM again, not the cache


@needs_prefect
def test_window_and_filters_do_not_move_the_watermark(
    settings: Settings, answering_llm: FakeUpstream, gateway: FakeUpstream
) -> None:
    old = failure("ancient", n=1).model_copy(update={"timestamp": "2020-01-01T00:00:00.000Z"})
    append(settings, [old, failure("x 1", endpoint="a", n=1), failure("y", endpoint="b", n=2)])
    state = run(since_hours=6, endpoint="a")
    assert state.is_completed(), state.message
    [entry] = posts(gateway)
    assert entry["operation"] == "error_analysis: 1 failures"
    assert "[a]" in entry["context"] and "[b]" not in entry["context"]
    assert load_state(settings.layout.analysis_state, AnalysisState).watermark is None
    assert run().is_completed()  # the scheduled run still sees b and ancient (a is known now)
    assert "[b]" in posts(gateway)[1]["context"] and "[a]" not in posts(gateway)[1]["context"]


LLM_FAULTS = {
    "down": None,  # LAKEHOUSE_URL left pointing at a closed port
    "drop": Drop(),
    "hang": Hang(5),
    "500 with text": Reply(500, {"text": "I am an error page, not advice"}),
    "invalid JSON": Reply(200, b"<html>not json"),
    "text not a string": Reply(200, {"text": 5}),
    "empty text": Reply(200, {"text": ""}),
}


@needs_prefect
@pytest.mark.parametrize("fault", list(LLM_FAULTS))
def test_llm_faults_give_a_degraded_report(
    fault: str,
    settings: Settings,
    gateway: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setenv("OBSERVER_HTTP_TIMEOUT", "0.3")
    behaviour = LLM_FAULTS[fault]
    if behaviour is not None:
        llm = request.getfixturevalue("llm")
        llm.default("/ai/generate", behaviour)
    append(settings, [failure(f"staffer {n} not found", n=n) for n in range(3)])
    append(settings, [failure("quota exceeded", endpoint="hybrid:search", n=4)])

    state = run()
    assert state.is_completed(), state.message
    assert state.message.startswith("degraded: LLM unavailable")
    [entry] = posts(gateway)
    assert entry["approach"] == DEGRADED_APPROACH
    assert entry["operation"] == "error_analysis: 4 failures"
    assert entry["result"].startswith("NOT LLM-MADE: the LLM was unavailable (")
    assert (
        "[scenario:fill] staffer <num> not found ×3; [hybrid:search] quota exceeded ×1"
        in (entry["result"])
    )
    assert "error page" not in entry["result"]
    if behaviour is not None:  # every fault is asked again before giving up
        assert len(request.getfixturevalue("llm").seen("/ai/generate")) == 3
    watermark = load_state(settings.layout.analysis_state, AnalysisState).watermark
    assert watermark is not None and watermark.position == settings.layout.ops_path.stat().st_size
    assert run().is_completed() and len(posts(gateway)) == 1  # reported: not re-posted


@needs_prefect
def test_a_slow_llm_within_the_timeout_is_used(
    settings: Settings, llm: FakeUpstream, gateway: FakeUpstream
) -> None:
    llm.script("/ai/generate", Reply(200, {"text": DIAGNOSIS}, delay=0.5))
    append(settings, [failure("boom")])
    state = run()
    assert state.is_completed() and "degraded" not in state.message
    assert posts(gateway)[0]["result"] == DIAGNOSIS


@needs_prefect
def test_gateway_down_fails_the_run_then_the_next_run_delivers(
    settings: Settings, answering_llm: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(settings, [failure("boom 1", n=1), failure("boom 2", n=2)])
    state = run()  # GATEWAY_URL points at a closed port
    assert state.is_failed()
    assert "gateway" in state.message
    saved = load_state(settings.layout.analysis_state, AnalysisState)
    assert saved.watermark is None and saved.groups == {}

    gateway = FakeUpstream()
    try:
        monkeypatch.setenv("GATEWAY_URL", gateway.url)
        again = run()
        assert again.is_completed(), again.message
        [entry] = posts(gateway)
        assert entry["result"] == DIAGNOSIS and entry["operation"] == "error_analysis: 2 failures"
        assert len(prompts(answering_llm)) == 1  # the cached answer was posted, not paid twice
    finally:
        gateway.close()


@needs_prefect
def test_emoji_and_surrogates_are_cut_safely(
    settings: Settings, llm: FakeUpstream, gateway: FakeUpstream
) -> None:
    llm.default("/ai/generate", Reply(200, {"text": "👩\u200d🔧" * 400}))
    original_line = (  # how the original's JSON.stringify writes a lone surrogate
        b'{"timestamp":"2099-01-01T00:00:00.000Z","endpoint":"scenario:fill",'
        b'"input_summary":"x","success":false,"duration_ms":0,'
        b'"output_summary":"bad \\ud83d half","error":"bad \\ud83d half","source":"scenario"}'
    )
    append(settings, [failure("🔥" * 700, n=1), original_line])
    state = run()
    assert state.is_completed(), state.message
    [entry] = posts(gateway)
    assert len(entry["result"]) <= 500 and not entry["result"].endswith("\u200d")
    assert len(entry["context"]) <= 500
    assert "bad \ufffd half" in prompts(llm)[0]
    assert entry["operation"] == "error_analysis: 2 failures"


@needs_prefect
def test_ten_thousand_failures_make_a_bounded_prompt(
    settings: Settings, answering_llm: FakeUpstream, gateway: FakeUpstream
) -> None:
    ops = [
        failure(
            f"error kind {chr(65 + n % 26)}{chr(65 + n // 26 % 26)} " + "z" * 900, f"ep{n % 500}"
        )
        for n in range(10_000)
    ]
    append(settings, [success()])
    assert run().is_completed()  # sets the watermark: the 10k failures below are all new
    append(settings, ops)
    state = run(max_groups=200)
    assert state.is_completed(), state.message
    [prompt] = prompts(answering_llm)
    assert len(prompt) <= MAX_PROMPT_CHARS
    assert "more group(s)" in prompt
    assert posts(gateway)[0]["operation"] == "error_analysis: 10000 failures"


@needs_prefect
def test_every_run_leaves_a_report_and_a_groups_table(
    settings: Settings, gateway: FakeUpstream
) -> None:
    append(settings, [failure("staffer 1 not found")])
    assert run().is_completed()  # LLM down: degraded
    report, table = asyncio.run(_latest_artifacts("analyze-errors-report", "analyze-errors-groups"))
    assert "Degraded report — not made by the LLM" in shown(report)
    assert "posted to the gateway's /log" in shown(report)
    rows = json.loads(table)
    assert rows[0]["pattern"] == "staffer <num> not found" and rows[0]["count"] == 1


async def _latest_artifacts(*keys: str) -> list[str]:
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts()
    data = {artifact.key: artifact.data for artifact in artifacts}
    return [data[key] for key in keys]


def test_a_known_group_is_analysed_again_after_reanalyse_after_hours(settings: Settings) -> None:
    append(settings, [failure("staffer 1 not found")])
    query = AnalyzeParameters(since_hours=1000 * 24 * 365)
    first = analysis.select(settings, query)
    entry = analysis.log_entry(first, LLM_APPROACH, DIAGNOSIS, "summary")
    report = analysis.Diagnosis(
        kind="llm", message="", entry=entry, shown=[first.fresh[0].signature]
    )
    analysis.commit(settings, first, report)
    assert analysis.select(settings, query).known == first.fresh
    later = datetime.now(UTC) + timedelta(hours=25)
    assert analysis.select(settings, query, now=later).fresh == first.fresh


# ── the pictures ────────────────────────────────────────────────────────────────────────────────


def dated(error: str, endpoint: str, moment: datetime) -> Op:
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return failure(error, endpoint).model_copy(update={"timestamp": stamp})


def test_failures_per_day_are_counted_once_across_runs_and_windows(settings: Settings) -> None:
    now = datetime.now(UTC)
    today, two_days_ago = now.date().isoformat(), (now - timedelta(days=2)).date().isoformat()
    append(settings, [dated("a", "ep", now - timedelta(days=2)), dated("b", "ep", now)])
    nothing = analysis.Diagnosis(kind="nothing", message="")
    first = analysis.select(settings, AnalyzeParameters())
    assert first.daily.days == {two_days_ago: {"ep": 1}, today: {"ep": 1}}
    analysis.commit(settings, first, nothing)
    append(settings, [dated("c", "ep", now), dated("d", "other", now)])
    second = analysis.select(settings, AnalyzeParameters())  # the stored days plus the new bytes
    assert second.daily.days == {two_days_ago: {"ep": 1}, today: {"ep": 2, "other": 1}}
    analysis.commit(settings, second, nothing)
    stored = load_state(settings.layout.analysis_state, AnalysisState).daily
    assert stored.days == second.daily.days

    window = analysis.select(settings, AnalyzeParameters(since_hours=24 * 7))  # rereads all
    assert window.daily.days == second.daily.days and window.fresh_daily == {}
    analysis.commit(settings, window, nothing)
    forced = analysis.select(settings, AnalyzeParameters(force=True))  # the last batch again
    assert forced.daily.days == second.daily.days and forced.fresh_daily == {}
    analysis.commit(settings, forced, nothing)
    assert load_state(settings.layout.analysis_state, AnalysisState).daily == stored
    only = analysis.select(settings, AnalyzeParameters(since_hours=1, endpoint="other"))
    assert only.daily.days == {today: {"other": 1}}


def test_undated_and_far_future_failures_are_left_out_of_the_picture(settings: Settings) -> None:
    far = failure("x", n=1)  # 2099
    undated = failure("y", n=2).model_copy(update={"timestamp": "yesterday"})
    append(settings, [far, undated])
    selection = analysis.select(settings, AnalyzeParameters())
    assert selection.failures == 2 and selection.daily.days == {}
    report = AnalysisReport(
        selection=selection,
        diagnosis=analysis.Diagnosis(kind="nothing", message="m"),
        delivery="d",
    )
    assert [title for title, _ in report.charts()] == ["Groups"]


@needs_prefect
def test_the_report_artifact_holds_the_charts_as_svg_images_with_their_tables(
    settings: Settings, gateway: FakeUpstream
) -> None:
    now = datetime.now(UTC)
    ops = [
        dated("staffer 1 not found", "scenario:fill", now - timedelta(days=d)) for d in (0, 0, 3)
    ]
    ops.append(dated("timeout after 30s", "hybrid:search", now))
    append(settings, ops)
    assert run().is_completed()  # LLM down: degraded, posted
    (page,) = asyncio.run(_latest_artifacts("analyze-errors-report"))
    images = re.findall(r"!\[[^\]]*\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", page)
    assert len(images) == 2
    trend_svg, groups_svg = (base64.b64decode(image).decode() for image in images)
    state = load_state(settings.layout.analysis_state, AnalysisState)
    stamps = sorted(op.timestamp for op in ops)
    expected = analysis_charts.trend_chart(
        state.daily, {"scenario:fill", "hybrid:search"}, (stamps[0], stamps[-1]), now.date()
    )
    assert trend_svg == expected.svg()
    assert expected.table().markdown() in page
    rows = {row[0]: row[1:] for row in expected.table().rows}
    assert rows[now.date().isoformat()] == ("2", "1")
    assert rows[(now - timedelta(days=3)).date().isoformat()] == ("1", "0")
    root = ElementTree.fromstring(groups_svg)
    assert root.get("viewBox") is not None and len(groups_svg) <= MAX_SVG_BYTES
    assert "| scenario\\:fill\\: staffer \\<num\\> not found | 3 | yes |" in page
