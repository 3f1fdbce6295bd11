"""`observer history`: the history table at a glance, and `observer history export`: every op
line back out, byte for byte, in arrival order."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, Field
from rich.console import Group, RenderableType
from rich.table import Table

from observer.files import load_state
from observer.history.state import HistoryState
from observer.history.stream import open_stream, sealed_segments
from observer.settings import Settings


class DayLine(BaseModel):
    day: str
    files: int
    rows: int
    bytes: int


class HistorySummary(BaseModel):
    """The table and the files waiting for it, from metadata only (no data file is read)."""

    history: str
    location: str
    host: str
    stream: str
    keeps_table: bool
    exists: bool = False
    version: int | None = None
    committed_position: int = 0
    rows: int = 0
    bytes: int = 0
    oldest_day: str | None = None
    newest_day: str | None = None
    days: list[DayLine] = Field(default_factory=list)
    hot_bytes: int = 0
    segments_waiting: int = 0
    segment_bytes: int = 0
    last_upkeep_at: str | None = None

    def __rich__(self) -> RenderableType:
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold")
        facts.add_column()
        facts.add_row("history", f"{self.history} (OBSERVER_HISTORY)")
        facts.add_row("table", self.location + ("" if self.exists else "  (no commit yet)"))
        if self.exists:
            facts.add_row(
                "holds",
                f"{self.rows:,} op(s), {_size(self.bytes)}, {len(self.days)} day(s):"
                f" {self.oldest_day} … {self.newest_day}; version {self.version}",
            )
        facts.add_row(
            "this host",
            f"{self.host} (stream {self.stream or '—'}), committed up to position"
            f" {self.committed_position:,}",
        )
        facts.add_row(
            "waiting",
            f"ops.jsonl {_size(self.hot_bytes)}; {self.segments_waiting} sealed segment(s),"
            f" {_size(self.segment_bytes)}",
        )
        keeper = "this host" if self.keeps_table else "another host (OBSERVER_HISTORY_UPKEEP)"
        facts.add_row("upkeep", f"{keeper}; last {self.last_upkeep_at or 'never'}")
        if not self.days:
            return facts
        days = Table("day", "files", "ops", "bytes", title="per day (newest 14)")
        for line in self.days[-14:]:
            days.add_row(line.day, str(line.files), f"{line.rows:,}", _size(line.bytes))
        return Group(facts, days)


def summarise(settings: Settings) -> HistorySummary:
    from observer.history.table import HistoryTable

    history = HistoryTable(settings)
    with open_stream(settings) as files:
        stream, hot = files.stream, files.pieces[-1].size
    table = history.open()
    segments = sealed_segments(settings.layout)
    committed = history.committed_end(table, stream)
    waiting = [s for s in segments if s.end > committed]
    summary = HistorySummary(
        history=settings.history,
        location=settings.history_location,
        host=settings.instance_name,
        stream=stream,
        keeps_table=settings.keeps_history,
        committed_position=committed,
        hot_bytes=hot,
        segments_waiting=len(waiting),
        segment_bytes=sum(s.end - max(s.base, committed) for s in waiting),
        last_upkeep_at=load_state(settings.layout.history_state, HistoryState).last_upkeep_at,
    )
    if table is None:
        return summary
    days = history.days(table)
    summary.exists = True
    summary.version = table.version()
    summary.days = [
        DayLine(day=d.day.isoformat(), files=d.files, rows=d.rows, bytes=d.bytes) for d in days
    ]
    summary.rows = sum(d.rows for d in days)
    summary.bytes = sum(d.bytes for d in days)
    if days:
        summary.oldest_day, summary.newest_day = days[0].day.isoformat(), days[-1].day.isoformat()
    return summary


def show_history(settings: Settings, *, as_json: bool) -> int:
    from rich.console import Console

    summary = summarise(settings)
    if as_json:
        print(summary.model_dump_json(indent=2))
    else:
        Console().print(summary)
    return 0


def export_history(settings: Settings, day: date | None, output: Path | None) -> int:
    """Write every op line (table, sealed segments, hot file) in arrival order to `output` or
    standard output; with `day`, only that UTC day's."""
    from observer.history.reader import OpsReader

    with OpsReader(settings) as reader:
        if output is None:
            _write(reader.export(day), sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with open(output, "wb") as handle:
                _write(reader.export(day), handle)
    return 0


def _write(chunks: object, sink: BinaryIO) -> None:
    for chunk in chunks:  # type: ignore[attr-defined]
        sink.write(chunk)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
