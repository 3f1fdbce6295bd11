"""History compaction: seal the hot ops.jsonl, commit every sealed segment to the history table
exactly once, delete a segment only after its commit, and keep the table (retention, compaction,
vacuum, checkpoint).

Exactly once: a segment is committed in pieces of about `max_commit_bytes` (a multi-GB
ops.jsonl from before the table existed is a long first backfill, committed piece by piece, its
memory bounded by a piece), each commit carrying this stream's transaction version, the position
it reaches (`observer.history.table`). A run killed anywhere resumes at the position the table
says: a commit that landed is never made again, one that did not is made again, and a segment is
deleted only once the table holds all of it (and the newer files hold the webhook's window).
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from observer import markdown as md
from observer.charts import BarChart, Bars
from observer.files import file_lock, load_state, read_tail, save_state, truncate_to
from observer.history.schema import Lines, history_frame
from observer.history.state import HistoryState
from observer.history.stream import (
    TAIL_LINES_KEPT,
    Segment,
    finish_interrupted_seal,
    seal,
    sealed_segments,
    utc_day,
)
from observer.history.table import DaySummary, HistoryTable
from observer.intake.checkpoint import IngestCheckpoint
from observer.pipelines.parameters import FlowParameters
from observer.pipelines.report import Artifact, measures
from observer.progress import Progress, ProgressReport
from observer.settings import Settings

#: The table's upkeep runs at most this often (each run still seals and commits).
UPKEEP_EVERY = timedelta(hours=1)
#: A commit's op lines: a run's memory follows it (measured: about 150 MB for the writer, plus
#: 6-10 MB per MB of lines), not the segment's size nor the history's.
DEFAULT_COMMIT_BYTES = 8 * 1024 * 1024

#: A commit run reports its progress on the run page beyond this many bytes waiting (a backfill).
PROGRESS_ABOVE = 64 * 1024 * 1024
#: The chart of the table per day shows at most this many days (the newest).
CHART_DAYS = 62


class CompactParameters(FlowParameters):
    """What a compact-history run does (the flow's form in the Prefect UI)."""

    seal: bool = Field(True, description="seal ops.jsonl first when it holds anything")
    upkeep: bool | None = Field(
        None,
        description="run retention, compaction, vacuum and checkpoint now (empty: once an hour,"
        " on the host OBSERVER_HISTORY_UPKEEP names)",
    )
    max_commit_bytes: int = Field(
        DEFAULT_COMMIT_BYTES,
        ge=4096,
        description="most bytes of op lines in one commit: the run's memory follows it",
    )
    max_seconds: float | None = Field(
        None, gt=0, description="stop committing after this long; the next run goes on"
    )
    vacuum_hours: int = Field(
        168, ge=0, description="files replaced more than this long ago are deleted by vacuum"
    )

    @property
    def label(self) -> str:
        parts = ["seal" if self.seal else "no seal"]
        if self.upkeep is not None:
            parts.append("upkeep" if self.upkeep else "no upkeep")
        if self.max_seconds is not None:
            parts.append(f"≤ {self.max_seconds:g}s")
        return ", ".join(parts)


class DayRow(BaseModel):
    day: str
    files: int
    rows: int
    bytes: int


class UpkeepReport(BaseModel):
    ran: bool = False
    note: str = ""
    days_dropped: list[str] = Field(default_factory=list)
    dropped: list[DayRow] = Field(default_factory=list)  # the dropped days as they were
    days_compacted: list[str] = Field(default_factory=list)
    files_removed: int = 0
    files_added: int = 0
    files_vacuumed: int = 0


class CompactReport(BaseModel):
    """One run: what was sealed and committed, what the upkeep did, the table per day."""

    sealed: str | None = None
    segments_committed: int = 0
    commits: int = 0
    rows: int = 0
    bytes_in: int = 0
    table_bytes_before: int = 0
    table_bytes_after: int = 0
    table_version: int | None = None
    committed_end: int = 0
    segments_deleted: int = 0
    segments_waiting: int = 0
    bytes_waiting: int = 0
    seconds: float = 0.0
    upkeep: UpkeepReport = Field(default_factory=UpkeepReport)
    days: list[DayRow] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        text = (
            f"{self.rows} op(s) from {self.segments_committed} segment(s) in {self.commits}"
            f" commit(s); table version {self.table_version}"
        )
        if self.upkeep.days_dropped:
            text += f"; {len(self.upkeep.days_dropped)} day(s) dropped"
        if self.segments_waiting:
            text += f"; {self.segments_waiting} segment(s) still waiting"
        return text

    def artifacts(self) -> list[Artifact]:
        facts = self.model_dump(exclude={"upkeep", "days"})
        facts.update(
            {
                "upkeep": self.upkeep.note or ("done" if self.upkeep.ran else "not run"),
                "days_dropped": ", ".join(self.upkeep.days_dropped) or "none",
                "days_compacted": ", ".join(self.upkeep.days_compacted) or "none",
                "files_removed": self.upkeep.files_removed,
                "files_added": self.upkeep.files_added,
                "files_vacuumed": self.upkeep.files_vacuumed,
            }
        )
        return [
            Artifact(
                "compact-history", f"History compaction: {self.summary}", table=measures(facts)
            ),
            Artifact(
                "compact-history-report",
                f"History compaction: {self.summary}",
                markdown=self.markdown(),
            ),
            Artifact(
                "compact-history-days",
                f"The history table per day ({len(self.days)} day(s))",
                table=[row.model_dump() for row in self.days]
                or [{"day": "(empty)", "files": 0, "rows": 0, "bytes": 0}],
            ),
        ]

    def chart(self) -> BarChart | None:
        """Ops and bytes per day of the table (the newest CHART_DAYS), the days dropped by this
        run's retention hatched, as they were before the drop."""
        days = sorted(self.days + self.upkeep.dropped, key=lambda row: row.day)[-CHART_DAYS:]
        if not days:
            return None
        return BarChart(
            title="History table: ops and bytes per day",
            categories=[row.day for row in days],
            measures=[
                Bars("ops", [row.rows for row in days]),
                Bars("bytes", [row.bytes for row in days], "bytes"),
            ],
            category_name="day",
            marked=set(self.upkeep.days_dropped),
            mark_label="dropped by retention",
        )

    def markdown(self) -> str:
        """What the run did, then the table per day as a chart and its numbers."""
        upkeep = self.upkeep
        lines = [
            "# History compaction",
            "",
            f"- **Sealed:** {md.text(self.sealed or 'nothing (ops.jsonl was empty)')}",
            f"- **Committed:** {self.rows} op(s), {self.bytes_in:,} byte(s) of lines from"
            f" {self.segments_committed} segment(s) in {self.commits} commit(s); this host's"
            f" stream is in the table up to position {self.committed_end:,}",
            f"- **Table:** version {self.table_version}, {self.table_bytes_before:,} →"
            f" {self.table_bytes_after:,} byte(s)",
            f"- **Segments:** {self.segments_deleted} deleted, {self.segments_waiting} waiting"
            f" ({self.bytes_waiting:,} byte(s))",
            "- **Upkeep:** "
            + (
                f"{len(upkeep.days_dropped)} day(s) dropped, {len(upkeep.days_compacted)} day(s)"
                f" compacted ({upkeep.files_removed} file(s) into {upkeep.files_added}),"
                f" {upkeep.files_vacuumed} file(s) vacuumed"
                if upkeep.ran
                else md.text(upkeep.note or "not run")
            ),
        ]
        chart = self.chart()
        if chart is not None:
            lines += ["", "## Per day", "", chart.markdown()]
        return "\n".join(lines) + "\n"


def nothing_new(settings: Settings, params: CompactParameters) -> str | None:
    """Why a run would do nothing (history off; no op in ops.jsonl, no segment waiting, upkeep
    not due), or None. A few stats and a small state file: a quiet run stops here."""
    if settings.history == "off":
        return "nothing to do: OBSERVER_HISTORY=off (ops.jsonl is kept whole)"
    layout = settings.layout
    checkpoint = load_state(layout.ingest_checkpoint, IngestCheckpoint)
    if params.seal and checkpoint.ops_bytes:
        return None
    committed = load_state(layout.history_state, HistoryState).committed_of(checkpoint.stream)
    if any(segment.end > committed for segment in sealed_segments(layout)):
        return None
    if _upkeep_due(settings, params):
        return None
    return "nothing new: ops.jsonl is empty and every segment is in the table"


def _upkeep_due(settings: Settings, params: CompactParameters, now: datetime | None = None) -> bool:
    if params.upkeep is not None:
        return params.upkeep
    if not settings.keeps_history:
        return False
    last = load_state(settings.layout.history_state, HistoryState).last_upkeep_at
    now = now or datetime.now(UTC)
    return last is None or now - datetime.fromisoformat(last) >= UPKEEP_EVERY


# ── sealing ─────────────────────────────────────────────────────────────────────────────────


def seal_hot_file(settings: Settings) -> str | None:
    """Seal ops.jsonl if it holds anything, under the ingestion's lock and checkpoint (a crash
    half-way through an earlier seal is completed first). Returns what was sealed, or None."""
    layout = settings.layout
    with file_lock(layout.ingest_lock):
        checkpoint = load_state(layout.ingest_checkpoint, IngestCheckpoint)
        checkpoint = finish_interrupted_seal(settings, checkpoint)
        truncate_to(layout.ops_path, checkpoint.ops_bytes)
        if checkpoint.ops_bytes == 0 or not checkpoint.stream:
            return None
        sealed = seal(settings, checkpoint, utc_day())
    return f"ops.jsonl, {checkpoint.ops_bytes} byte(s) from position {checkpoint.hot_base} (now {sealed.hot_base})"


# ── committing ──────────────────────────────────────────────────────────────────────────────


def commit_segments(
    settings: Settings,
    params: CompactParameters,
    report: CompactReport,
    on_progress: ProgressReport | None = None,
) -> None:
    """Commit every sealed segment to the table exactly once, oldest first, then delete the
    committed ones the webhook's window does not need. A backfill (more than PROGRESS_ABOVE
    bytes waiting) reports how far it got to `on_progress`."""
    started = time.monotonic()
    history = HistoryTable(settings)
    layout = settings.layout
    with file_lock(layout.history_lock):
        stream = load_state(layout.ingest_checkpoint, IngestCheckpoint).stream
        table = history.open()
        report.table_bytes_before = _table_bytes(history, table)
        committed = history.committed_end(table, stream)
        segments = sealed_segments(layout)
        total = sum(max(0, s.end - max(s.base, committed)) for s in segments)
        progress = Progress.maybe("history commit", total, on_progress, above=PROGRESS_ABOVE)
        done = 0
        for segment in segments:
            if params.max_seconds is not None and time.monotonic() - started > params.max_seconds:
                break
            touched = False
            while committed < segment.end:
                start = max(committed, segment.base)
                data = _whole_lines_at(segment, start - segment.base, params.max_commit_bytes)
                if not data:
                    break  # nothing complete left (a segment never ends mid-line, but be safe)
                rows = history_frame(
                    Lines(data, segment.base, start - segment.base),
                    host=settings.instance_name,
                    stream=stream,
                    fallback_day=segment.day,
                )
                table = history.append(table, rows, stream=stream, end=start + len(data))
                committed = start + len(data)
                report.commits += 1
                report.rows += rows.height
                report.bytes_in += len(data)
                done += len(data)
                touched = True
                progress.update(done, note=f"{report.rows} op(s) in {report.commits} commit(s)")
                if (
                    params.max_seconds is not None
                    and time.monotonic() - started > params.max_seconds
                ):
                    break
            report.segments_committed += touched
        progress.finish()
        report.committed_end = committed
        state = load_state(layout.history_state, HistoryState)
        save_state(
            layout.history_state,
            state.model_copy(update={"stream": stream, "committed": committed}),
        )
        report.segments_deleted = _delete_committed(settings, committed)
        left = [s for s in sealed_segments(layout) if s.end > committed]
        report.segments_waiting = len(left)
        report.bytes_waiting = sum(s.end - max(s.base, committed) for s in left)
        if table is not None:
            report.table_version = table.version()
        report.table_bytes_after = _table_bytes(history, table)
    report.seconds = round(time.monotonic() - started, 3)


def _whole_lines_at(segment: Segment, offset: int, limit: int) -> bytes:
    """Complete lines of `segment` from `offset`, about `limit` bytes (a longer line whole)."""
    with open(segment.path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(limit)
        while b"\n" not in data:
            more = handle.read(limit)
            if not more:
                return b""
            data += more
    return data[: data.rfind(b"\n") + 1]


def _delete_committed(settings: Settings, committed: int) -> int:
    """Delete the committed segments, newest last, except those the files after them need to
    hold TAIL_LINES_KEPT lines (the webhook rebuilds its /stats window from the files alone)."""
    layout = settings.layout
    segments = [s for s in sealed_segments(layout) if s.end <= committed]
    held = len(read_tail(layout.ops_path, TAIL_LINES_KEPT).lines)
    newer = [s for s in sealed_segments(layout) if s.end > committed]
    for segment in reversed(newer):
        held += len(read_tail(segment.path, TAIL_LINES_KEPT).lines)
    deleted = 0
    for segment in reversed(segments):
        if held >= TAIL_LINES_KEPT:
            segment.path.unlink(missing_ok=True)
            deleted += 1
        else:
            held += len(read_tail(segment.path, TAIL_LINES_KEPT).lines)
    return deleted


def _table_bytes(history: HistoryTable, table: Any) -> int:
    return sum(day.bytes for day in history.days(table)) if table is not None else 0


# ── upkeep ──────────────────────────────────────────────────────────────────────────────────


def keep_table(
    settings: Settings, params: CompactParameters, report: CompactReport, today: date | None = None
) -> None:
    """Retention, compaction of the closed days, vacuum and a checkpoint, on the one host that
    keeps the table (OBSERVER_HISTORY_UPKEEP), at most once an hour unless asked."""
    upkeep = report.upkeep
    history = HistoryTable(settings)
    if not _upkeep_due(settings, params):
        upkeep.note = (
            "not this host's (OBSERVER_HISTORY_UPKEEP)"
            if not settings.keeps_history and params.upkeep is None
            else "not due (once an hour)"
        )
        report.days = _day_rows(history)
        return
    today = today or datetime.now(UTC).date()
    with file_lock(settings.layout.history_lock):
        table = history.open()
        if table is None:
            upkeep.note = "no table yet"
            return
        first_kept = today - timedelta(days=settings.history_days - 1)
        before = {d.day: d for d in history.days(table)}
        dropped = history.drop_days_before(table, first_kept)
        upkeep.days_dropped = [d.isoformat() for d in dropped]
        upkeep.dropped = [_day_row(before[d]) for d in dropped]
        table = history.open() or table
        closed = [d.day for d in history.days(table) if d.files > 1 and d.day < today]
        upkeep.files_removed, upkeep.files_added = history.compact(table, closed)
        upkeep.days_compacted = [d.isoformat() for d in closed]
        table = history.open() or table
        state = load_state(settings.layout.history_state, HistoryState)
        upkeep.files_vacuumed, vacuumed = history.vacuum(
            table, params.vacuum_hours, frozenset(state.vacuumed)
        )
        table = history.open() or table
        history.checkpoint(table)
        upkeep.ran = True
        report.table_version = table.version()
        save_state(
            settings.layout.history_state,
            state.model_copy(
                update={
                    "last_upkeep_at": datetime.now(UTC).isoformat(),
                    "vacuumed": sorted(vacuumed),
                }
            ),
        )
    report.table_bytes_after = _table_bytes(history, history.open())
    report.days = _day_rows(history)


def _day_rows(history: HistoryTable) -> list[DayRow]:
    table = history.open()
    if table is None:
        return []
    return [_day_row(day) for day in history.days(table)]


def _day_row(day: DaySummary) -> DayRow:
    return DayRow(day=day.day.isoformat(), files=day.files, rows=day.rows, bytes=day.bytes)
