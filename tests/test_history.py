"""The history table against real parts: ops sealed out of a bounded ops.jsonl into a real Delta
table on disk and on an S3 server of the test's own, read back as one stream with the hot file,
kept (retention, compaction, vacuum) and exported byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from observer.history.reader import OpsReader
from observer.history.schema import HISTORY_SCHEMA, Lines, history_frame
from observer.history.stream import TAIL_LINES_KEPT, open_stream, sealed_segments
from observer.history.table import HistoryTable
from observer.pipelines.history import CompactParameters, nothing_new
from observer.settings import Settings, load_settings
from observer.webhook.window import WINDOW_SIZE
from tests.history_streams import compact, ingest, ops_over_days, stream_bytes
from tests.s3 import S3Server

ROOT = Path(__file__).resolve().parent.parent
DAYS = ["2026-12-01", "2026-12-02", "2026-12-03"]


@pytest.fixture
def small_hot(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """Settings whose ops.jsonl is sealed every few kilobytes."""
    monkeypatch.setenv("OBSERVER_HOT_MAX_BYTES", "6000")
    return load_settings()


def export(settings: Settings, day: date | None = None) -> bytes:
    with OpsReader(settings) as reader:
        return b"".join(reader.export(day))


def test_op_lines_become_typed_rows_and_keep_their_bytes() -> None:
    data = (
        b'{"timestamp":"2026-12-07T12:00:00+05:00","endpoint":"e","success":true,'
        b'"duration_ms":812,"count":3}\n'
        b'{"timestamp":"2026-12-07T10:00:00.123Z","success":"false","duration_ms":"abc",'
        b'"count":2.5,"endpoint":5}\n'
        b'{"endpoint":"a\\ud800","timestamp":"garbage"}\n'
        b"not json\n"
        b'\xff{"success":false}\n'
    )
    rows = history_frame(Lines(data, 1000, 10), host="h", stream="s", fallback_day=date(2026, 1, 2))
    assert rows.schema == pl.Schema(HISTORY_SCHEMA)
    starts = [10]
    for line in data.splitlines()[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    assert rows["offset"].to_list() == starts
    assert rows["ts"][0] == datetime(2026, 12, 7, 7, 0, tzinfo=UTC)  # its offset, in UTC
    assert rows["day"].to_list() == [date(2026, 12, 7)] * 2 + [date(2026, 1, 2)] * 3
    # A value of another type is null in its column; the line keeps it.
    typed = ["success", "duration_ms", "count", "endpoint"]
    assert rows.select(typed).row(0) == (True, 812.0, 3, "e")
    assert rows.select(typed).row(1) == (None, None, None, None)
    assert rows["endpoint"][2] == "a?"  # a lone surrogate is not text: replaced in the column
    assert rows["line_bytes"].to_list()[:4] == [None] * 4
    assert rows["line_bytes"][4] == b'\xff{"success":false}'
    rebuilt = b"".join(
        (raw if raw is not None else line.encode()) + b"\n"
        for line, raw in rows.select("line", "line_bytes").iter_rows()
    )
    assert rebuilt == data


def test_a_table_on_disk_holds_every_op_once_by_day_with_its_schema(small_hot: Settings) -> None:
    ops = ops_over_days(DAYS, 1000, seed=1)
    ingest(small_hot, ops, batch=100)
    assert len(sealed_segments(small_hot.layout)) > 10  # ops.jsonl stayed small
    report = compact(small_hot, today=date(2026, 12, 3))
    assert report.rows == len(ops) and report.segments_waiting == 0
    assert not small_hot.layout.ops_path.exists()  # sealed by the run

    table = pl.scan_delta(small_hot.history_location)
    assert table.collect_schema() == pl.Schema(HISTORY_SCHEMA)
    per_day = dict(table.group_by("day").len().sort("day").collect().iter_rows())
    assert per_day == {date.fromisoformat(day): 1000 for day in DAYS}
    assert table.select(
        pl.struct("stream", "segment", "offset").n_unique()
    ).collect().item() == len(ops)
    # Committed segments were deleted, except the newest ones holding the webhook's window.
    kept = [s.path.read_bytes().count(b"\n") for s in sealed_segments(small_hot.layout)]
    assert sealed_segments(small_hot.layout)[0].base > 0
    assert sum(kept[1:]) < TAIL_LINES_KEPT <= sum(kept)
    with open_stream(small_hot) as files:
        assert len(files.tail(WINDOW_SIZE).lines) == WINDOW_SIZE <= TAIL_LINES_KEPT

    assert export(small_hot) == stream_bytes(ops)
    day_two = [op for op in ops if op.timestamp.startswith("2026-12-02")]
    assert export(small_hot, date(2026, 12, 2)) == stream_bytes(day_two)

    # DuckDB reads the same table (its files, with the day from their paths).
    files = HistoryTable(small_hot).open().file_uris()  # type: ignore[union-attr]
    failures = (
        duckdb.connect()
        .execute(
            "select count(*) from read_parquet(?, hive_partitioning = true)"
            " where success = false and day = DATE '2026-12-02'",
            [files],
        )
        .fetchone()
    )
    assert failures is not None
    assert failures[0] == sum(1 for op in day_two if not op.success)


def test_hot_and_history_read_as_one_stream_whatever_is_committed(small_hot: Settings) -> None:
    ops = ops_over_days(DAYS, 300, seed=2)
    ingest(small_hot, ops[:500])
    compact(small_hot, today=date(2026, 12, 3))
    ingest(small_hot, ops[500:])  # new segments and a hot file, not committed yet
    with OpsReader(small_hot) as reader:
        assert reader.boundary < reader.end
        assert b"".join(lines.data for lines in reader.lines_from(0)) == stream_bytes(ops)
        middle = len(stream_bytes(ops[:123]))
        assert b"".join(lines.data for lines in reader.lines_from(middle)) == stream_bytes(
            ops[123:]
        )
        following, end = reader.ops_from(middle, columns=["success", "endpoint"])
        assert end == reader.end and following.height == len(ops) - 123
        assert following["pos"][0] == middle
        assert following["endpoint"].to_list() == [op.endpoint for op in ops[123:]]
        tail = reader.tail(700)
        assert tail.lines == [op.to_line() for op in ops[-700:]]
        assert tail.offsets[0] == len(stream_bytes(ops[:-700]))
        typed = reader.ops_between(
            datetime(2026, 12, 2, tzinfo=UTC),
            datetime(2026, 12, 3, tzinfo=UTC),
            columns=["success"],
        )
        assert typed.height == 300
        assert typed["success"].sum() == sum(1 for op in ops[300:600] if op.success)


def test_retention_drops_whole_old_days_and_a_second_run_changes_nothing(
    small_hot: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = ops_over_days(["2026-11-28", "2026-11-29", *DAYS], 200, seed=3)
    ingest(small_hot, ops)
    compact(small_hot, today=date(2026, 12, 3), upkeep=False)
    history = HistoryTable(small_hot)
    before = {d.day: d.rows for d in history.days(history.open())}  # type: ignore[arg-type]
    monkeypatch.setenv("OBSERVER_HISTORY_DAYS", "3")
    settings = load_settings()
    report = compact(settings, today=date(2026, 12, 3), upkeep=True, vacuum_hours=0)
    assert report.upkeep.days_dropped == ["2026-11-28", "2026-11-29"]
    assert report.upkeep.days_compacted == ["2026-12-01", "2026-12-02"]  # closed days, small files
    table = history.open()
    assert table is not None
    after = {d.day: (d.rows, d.files) for d in history.days(table)}
    assert after == {
        date(2026, 12, 1): (before[date(2026, 12, 1)], 1),
        date(2026, 12, 2): (before[date(2026, 12, 2)], 1),
        date(2026, 12, 3): (before[date(2026, 12, 3)], after[date(2026, 12, 3)][1]),
    }
    assert report.upkeep.files_vacuumed > 0
    version = table.version()
    again = compact(settings, today=date(2026, 12, 3), upkeep=True, vacuum_hours=0)
    assert (again.upkeep.days_dropped, again.upkeep.days_compacted) == ([], [])
    assert again.upkeep.files_vacuumed == 0 and again.rows == 0
    table = history.open()
    assert table is not None
    assert {d.day: (d.rows, d.files) for d in history.days(table)} == after
    assert table.version() == version
    kept = [op for op in ops if op.timestamp >= "2026-12-01"]
    assert export(settings) == stream_bytes(kept)


def test_history_off_keeps_one_growing_ops_jsonl(
    small_hot: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVER_HISTORY", "off")
    settings = load_settings()
    ops = ops_over_days(DAYS, 100, seed=4)
    ingest(settings, ops)
    assert sealed_segments(settings.layout) == []
    assert settings.layout.ops_path.read_bytes() == stream_bytes(ops)
    assert nothing_new(settings, CompactParameters()) == (
        "nothing to do: OBSERVER_HISTORY=off (ops.jsonl is kept whole)"
    )
    assert export(settings) == stream_bytes(ops)


def test_the_table_on_s3_and_two_hosts_committing_to_it_at_once(
    s3_server: S3Server,
    tmp_path: Path,
    observer_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri = f"s3://{s3_server.bucket()}/observer/ops"
    hosts = {}
    for name in ("a", "b"):
        env = {
            **os.environ,
            **observer_env,
            **s3_server.env,
            "OBSERVER_DATA_DIR": str(tmp_path / name),
            "OBSERVER_INSTANCE": name,
            "OBSERVER_HISTORY_URI": uri,
            "OBSERVER_HOT_MAX_BYTES": "3000",
        }
        settings = load_settings(**_settings_from(env))
        ops = ops_over_days(DAYS, 80, seed=10 + len(hosts))
        ingest(settings, ops)
        hosts[name] = (env, settings, ops)
    # Both hosts commit at the same moment, each in its own process, many small commits each.
    children = [
        subprocess.Popen(
            [sys.executable, "-c", COMPACT_SCRIPT],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for env, _, _ in hosts.values()
    ]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err.decode()[-3000:]
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    rows = pl.scan_delta(uri).select("host", "stream", "segment", "offset").collect()
    assert rows.height == sum(len(ops) for _, _, ops in hosts.values())
    assert rows.n_unique() == rows.height
    assert dict(rows.group_by("host").len().iter_rows()) == {"a": 240, "b": 240}
    for _, settings, ops in hosts.values():
        assert export(settings) == stream_bytes(ops)
    # Upkeep is off on object storage unless a host is named for it.
    assert hosts["a"][1].keeps_history is False


COMPACT_SCRIPT = """
from tests.history_streams import compact
from observer.settings import load_settings
report = compact(load_settings(), max_commit_bytes=6000)
assert report.segments_waiting == 0, report
print(report.commits)
"""


def _settings_from(env: dict[str, str]) -> dict[str, str]:
    return {
        key: value
        for key, value in env.items()
        if key.startswith(("OBSERVER_", "OVERSEER_", "GATEWAY_", "LAKEHOUSE_"))
    }


def test_observer_history_shows_the_table_and_exports_it(small_hot: Settings) -> None:
    ops = ops_over_days(DAYS, 200, seed=5)
    ingest(small_hot, ops)
    compact(small_hot, today=date(2026, 12, 3))
    env = {**os.environ}
    shown = subprocess.run(
        [sys.executable, "-m", "observer.cli", "history", "--json"],
        env=env,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr.decode()
    summary = json.loads(shown.stdout)
    assert summary["rows"] == 600 and summary["oldest_day"] == "2026-12-01"
    assert [d["rows"] for d in summary["days"]] == [200, 200, 200]
    assert summary["segments_waiting"] == 0 and summary["keeps_table"] is True
    exported = subprocess.run(
        [sys.executable, "-m", "observer.cli", "history", "export", "--day", "2026-12-03"],
        env=env,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr.decode()
    assert exported.stdout == stream_bytes([op for op in ops if op.timestamp >= "2026-12-03"])


def test_the_warm_template_never_imports_deltalake() -> None:
    """The template forks every run and must stay single-threaded: importing every flow and
    answering compact-history's first-step check loads no Delta code and starts no thread."""
    script = """
import sys
from observer.worker.template import preload, thread_count
from observer.worker.worker import preload_modules
preload(preload_modules())
from observer.catalog import COMPACT_HISTORY
print(COMPACT_HISTORY.nothing_new({}))
assert "deltalake" not in sys.modules, "deltalake imported"
assert thread_count() == 1, thread_count()
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
