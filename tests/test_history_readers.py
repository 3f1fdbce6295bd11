"""The readers of ops over hot + history against the same ops in one never-sealed file (a golden
comparison): analysis windows and watermarks, the playbook window; and the compact-history flow on
a real Prefect server, with what its run page shows."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.compact_history import compact_history
from observer import markdown
from observer.history.stream import sealed_segments
from observer.pipelines import analysis
from observer.pipelines.analysis import AnalyzeParameters, Diagnosis
from observer.pipelines.history import CompactParameters
from observer.pipelines.playbooks import ConsolidateParameters, build_playbook
from observer.settings import Settings, load_settings
from tests.history_streams import compact, ingest, ops_over_days

DAYS = ["2026-12-01", "2026-12-02", "2026-12-03"]
NOW = datetime(2026, 12, 3, 23, 59, tzinfo=UTC)


@pytest.fixture
def pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> tuple[Settings, Settings]:
    """Two data dirs for the same ops: one ops.jsonl kept whole, one sealed into the table."""
    whole = load_settings(data_dir=tmp_path / "whole", history="off")
    sealed = load_settings(data_dir=tmp_path / "sealed", hot_max_bytes=5000)
    return whole, sealed


def groups(selection: analysis.Selection) -> list[tuple[str, str, int, str, str]]:
    return [
        (g.endpoint, g.pattern, g.count, g.first_seen, g.last_seen)
        for g in selection.fresh + selection.known
    ]


def test_analysis_and_playbooks_over_hot_and_history_equal_one_file(
    pair: tuple[Settings, Settings],
) -> None:
    whole, sealed = pair
    ops = ops_over_days(DAYS, 1000, seed=31)
    for settings in pair:
        ingest(settings, ops, batch=200)
    compact(sealed, today=date(2026, 12, 3))
    ingest(sealed, [])  # nothing new: the hot file stays empty
    assert sealed_segments(sealed.layout)[0].base > 0  # the oldest ops are in the table only
    for hours in (2, 30, 80):
        query = AnalyzeParameters(since_hours=hours)
        expected = analysis.select(whole, query, now=NOW)
        got = analysis.select(sealed, query, now=NOW)
        assert groups(got) == groups(expected) and got.failures == expected.failures
    for window in (50, 2500, 3000):  # within the files; reaching into the table; everything
        params = ConsolidateParameters(window_ops=window)
        expected_playbook = build_playbook(whole, params)
        got_playbook = build_playbook(sealed, params)
        assert [p.evidence for p in got_playbook.entries] == [
            p.evidence for p in expected_playbook.entries
        ]
        assert got_playbook.ops.position == expected_playbook.ops.position


def test_a_watermark_set_before_a_seal_goes_on_after_it(pair: tuple[Settings, Settings]) -> None:
    whole, sealed = pair
    ops = ops_over_days(DAYS, 1000, seed=32)
    first, second = ops[:600], ops[600:]
    selections = {}
    for settings in pair:
        ingest(settings, first, batch=300)
        before = analysis.select(settings, AnalyzeParameters())
        analysis.commit(settings, before, Diagnosis(kind="nothing", message="test"))
        ingest(settings, second, batch=300)
        if settings is sealed:
            compact(settings, today=date(2026, 12, 3))  # the watermark's segment leaves the disk
        selections[settings.data_dir] = analysis.select(settings, AnalyzeParameters())
    assert sealed_segments(sealed.layout)[0].base > selections[sealed.data_dir].start
    got, expected = selections[sealed.data_dir], selections[whole.data_dir]
    assert (got.start, got.end, got.failures) == (expected.start, expected.end, expected.failures)
    assert groups(got) == groups(expected)
    assert got.failures == sum(1 for op in second if not op.success)


def test_a_wiped_data_dir_does_not_trust_the_old_watermark(
    pair: tuple[Settings, Settings], tmp_path: Path
) -> None:
    _, sealed = pair
    ops = ops_over_days(DAYS[:1], 300, seed=33)
    ingest(sealed, ops)
    selection = analysis.select(sealed, AnalyzeParameters())
    analysis.commit(sealed, selection, Diagnosis(kind="nothing", message="test"))
    state = sealed.layout.analysis_state.read_bytes()
    wiped = load_settings(data_dir=tmp_path / "wiped", hot_max_bytes=5000)
    ingest(wiped, ops[:10])
    wiped.layout.analysis_state.write_bytes(state)  # the old watermark, in a new stream
    again = analysis.select(wiped, AnalyzeParameters())
    assert again.note.startswith("the ops were replaced")
    assert again.failures == sum(1 for op in ops[:10] if not op.success)


@pytest.mark.usefixtures("prefect_server")
def test_the_compact_history_flow_shows_what_it_did_on_its_run_page(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setenv("OBSERVER_HOT_MAX_BYTES", "5000")
    settings = load_settings()
    ingest(settings, ops_over_days(DAYS, 200, seed=34))
    state = compact_history(CompactParameters(upkeep=True), return_state=True)
    assert state.is_completed(), state.message
    assert state.message.startswith("600 op(s) from")
    assert settings.layout.ops_path.exists() is False

    async def artifacts() -> dict[str, object]:
        async with get_client() as client:
            latest = await client.read_latest_artifacts()
        wanted = {"compact-history", "compact-history-days", "compact-history-report"}
        return {
            a.key: json.loads(a.data) if a.type == "table" else a.data
            for a in latest
            if a.key in wanted
        }

    import asyncio

    shown = asyncio.run(artifacts())
    facts = {row["measure"]: row["value"] for row in shown["compact-history"]}
    assert facts["rows"] == 600 and facts["segments_waiting"] == 0
    days = shown["compact-history-days"]
    assert [(row["day"], row["rows"]) for row in days] == [(d, 200) for d in DAYS]
    # The report's chart is an SVG inside the markdown, drawn from the same numbers.
    page = shown["compact-history-report"]
    encoded = re.search(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", page)
    assert encoded is not None, page
    svg = base64.b64decode(encoded[1]).decode()
    assert "<title>History table: ops and bytes per day</title>" in svg
    assert all(f"| {markdown.cell(day)} | 200 |" in page for day in DAYS), page
    again = compact_history(return_state=True)
    assert again.is_completed()
    assert again.message == "nothing new: ops.jsonl is empty and every segment is in the table"


def test_a_backfill_reports_its_progress_and_marks_the_days_it_dropped(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    from observer.pipelines import history

    monkeypatch.setattr(history, "PROGRESS_ABOVE", 0)  # this small stream counts as a backfill
    monkeypatch.setenv("OBSERVER_HOT_MAX_BYTES", "5000")
    monkeypatch.setenv("OBSERVER_HISTORY_DAYS", "2")
    settings = load_settings()
    ingest(settings, ops_over_days(DAYS, 200, seed=35))
    reports: list[object] = []
    report = history.CompactReport(sealed=history.seal_hot_file(settings))
    params = CompactParameters(max_commit_bytes=20_000, upkeep=True)
    history.commit_segments(settings, params, report, on_progress=reports.append)
    history.keep_table(settings, params, report, today=date(2026, 12, 3))
    percents = [update.percent for update in reports]  # type: ignore[attr-defined]
    assert percents[0] == 0 and percents[-1] == 100 and percents == sorted(percents)
    assert "history commit:" in reports[-1].line()  # type: ignore[attr-defined]
    assert report.upkeep.days_dropped == ["2026-12-01"]
    chart = report.chart()
    assert chart is not None and chart.marked == {"2026-12-01"}
    assert chart.categories == DAYS and chart.measures[0].values == [200, 200, 200]
