"""Ingestion: move spooled records into ops.jsonl, in order, exactly once, through polars.

The checkpoint records where the spool was read up to *and* how long ops.jsonl and the id log were
when it was written. A run that dies after appending but before its checkpoint leaves longer files;
the next run cuts them back to the checkpoint and appends again, so nothing is lost or doubled.
Records carrying an `event_id` already ingested within the dedup window are dropped (idempotent
retries, and a corrections tailer that re-records after a crash).

ops.jsonl is the hot file of the history (`observer.history.stream`): sealed into `segments/` as
part of the checkpoint when it passes OBSERVER_HOT_MAX_BYTES or its ops began on another UTC day,
before the next batch is appended.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
from pydantic import Field

from observer.files import append_durably, file_lock, load_state, save_state, truncate_to
from observer.history.stream import (
    finish_interrupted_seal,
    new_stream_name,
    seal,
    seal_reason,
    utc_day,
)
from observer.intake.checkpoint import (
    IngestCheckpoint,
    RecentIds,
    load_recent_ids,
    spool_bytes_waiting,
)
from observer.intake.spool import SpoolPosition, delete_segments_before, read_spool
from observer.pipelines.frames import frame_lines, spool_frame
from observer.pipelines.parameters import FlowParameters
from observer.pipelines.report import Artifact, CountingReport
from observer.progress import Progress, ProgressReport
from observer.settings import Settings

DEFAULT_BATCH_BYTES = 32 * 1024 * 1024
LINGER_POLL = 0.2
#: A drain of more than this (two batches, a few seconds) shows its progress.
PROGRESS_ABOVE_BYTES = 2 * DEFAULT_BATCH_BYTES


class IngestParameters(FlowParameters):
    """Parameters of an ingestion run (shown as a form in the Prefect UI)."""

    reason: str = Field("manual", description="why this run started: event, schedule or manual")
    max_seconds: float = Field(
        60.0, gt=0, description="stop draining after this long; the rest waits for the next run"
    )
    linger_seconds: float = Field(
        0.0,
        ge=0,
        description="once the spool is empty, keep watching it this long for more records (a run"
        " woken by events lingers, so a steady stream is drained by one run, not one run each)",
    )

    @property
    def label(self) -> str:
        return self.reason


class IngestReport(CountingReport):
    """What one ingestion run did, for its logs and its table artifact."""

    reason: str = Field("manual", exclude=True)  # why the run started (in the description only)
    ingested: int = 0
    duplicates: int = 0
    torn_bytes: int = 0
    repaired_crash: bool = False
    seals: int = 0
    successes: int = 0
    failures: int = 0
    by_source: dict[str, int] = Field(default_factory=dict)
    ingested_total: int = 0
    ops_bytes: int = 0

    def artifacts(self) -> list[Artifact]:
        """A table of (measure, value) rows, counts per source last."""
        description = f"Ingestion run ({self.reason}): {self.ingested} op(s) into ops.jsonl"
        return [Artifact("ingest-events", description, table=self.rows("by_source", "source"))]


def nothing_new(settings: Settings, params: IngestParameters | None = None) -> str | None:
    """Why a run would find nothing to do (the spool fully ingested, nothing to repair), or None.

    A stat or two: a quiet run stops here, before any task, and leaves no artifact. Every run
    drains the whole spool, so `params` (taken as every flow's check takes them) change nothing.
    """
    layout = settings.layout
    if not layout.ingest_checkpoint.exists():
        return None  # first run: it adopts an existing ops.jsonl
    checkpoint = load_state(layout.ingest_checkpoint, IngestCheckpoint)
    if (
        spool_bytes_waiting(settings, checkpoint)
        or _longer_than(layout.ops_path, checkpoint.ops_bytes)
        or _longer_than(layout.ingested_ids, checkpoint.ids_bytes)
    ):
        return None
    return f"nothing new: the spool is empty ({checkpoint.ingested_total} op(s) ingested in all)"


def _longer_than(path: Path, size: int) -> bool:
    """Whether `path` holds more than `size` bytes: a run stopped mid-batch, to be repaired."""
    try:
        return path.stat().st_size > size
    except FileNotFoundError:
        return False


def drain_spool(
    settings: Settings,
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    max_seconds: float | None = None,
    reason: str = "manual",
    linger_seconds: float = 0.0,
    on_progress: ProgressReport | None = None,
    progress_above: int = PROGRESS_ABOVE_BYTES,
) -> IngestReport:
    """Move every complete spooled record into ops.jsonl; batch by batch, each one checkpointed.

    Only one ingester runs at a time (a file lock); a second caller waits for the first. With
    `linger_seconds`, an empty spool is watched that long for more records (every LINGER_POLL
    seconds) before the run ends. `max_seconds` bounds a run under a constant stream of events:
    what is left waits for the next. A spool of more than `progress_above` bytes (a backlog after
    an outage) reports its progress to `on_progress` after each batch (bytes, ops, rate, time left).
    """
    started = time.monotonic()
    report = IngestReport(reason=reason)
    layout = settings.layout
    with file_lock(layout.ingest_lock):
        checkpoint = finish_interrupted_seal(settings, _load_checkpoint(settings))
        report.repaired_crash = truncate_to(layout.ops_path, checkpoint.ops_bytes) | truncate_to(
            layout.ingested_ids, checkpoint.ids_bytes
        )
        seen = load_recent_ids(settings)
        waiting = spool_bytes_waiting(settings, checkpoint)
        progress = Progress.maybe("spool drain", waiting, on_progress, above=progress_above)
        idle_since = time.monotonic()
        while max_seconds is None or time.monotonic() - started < max_seconds:
            chunk = read_spool(layout.spool_dir, checkpoint.position, max_bytes=batch_bytes)
            if chunk.end == checkpoint.position:
                if time.monotonic() - idle_since >= linger_seconds:
                    break
                time.sleep(LINGER_POLL)
                continue
            idle_since = time.monotonic()
            checkpoint = _seal_if_due(settings, checkpoint, report)
            checkpoint = _ingest_batch(settings, checkpoint, chunk.data, chunk.end, seen, report)
            report.torn_bytes += chunk.torn_bytes
            delete_segments_before(layout.spool_dir, checkpoint.segment)
            if progress.reporting:  # the spool may grow while it drains: the total follows it
                progress.update(
                    report.bytes_read,
                    total=report.bytes_read + spool_bytes_waiting(settings, checkpoint),
                    note=f"{report.ingested} op(s) ingested",
                )
        progress.finish()
        checkpoint = _seal_if_due(settings, checkpoint, report)
        report.ingested_total = checkpoint.ingested_total
        report.ops_bytes = checkpoint.ops_bytes
    report.seconds = round(time.monotonic() - started, 4)
    return report


def _seal_if_due(
    settings: Settings, checkpoint: IngestCheckpoint, report: IngestReport
) -> IngestCheckpoint:
    """Seal ops.jsonl into the history's segments when it is due (just checkpointed: its
    length is the checkpoint's)."""
    if seal_reason(settings, checkpoint, utc_day()) is None:
        return checkpoint
    report.seals += 1
    return seal(settings, checkpoint, utc_day())


def _load_checkpoint(settings: Settings) -> IngestCheckpoint:
    """The checkpoint; on first use an existing ops.jsonl (e.g. the original's) is adopted as is.
    A checkpoint from before the history gets its stream's name here, once."""
    layout = settings.layout
    if layout.ingest_checkpoint.exists():
        checkpoint = load_state(layout.ingest_checkpoint, IngestCheckpoint)
        if not checkpoint.stream:
            checkpoint = checkpoint.model_copy(update={"stream": new_stream_name()})
            save_state(layout.ingest_checkpoint, checkpoint)
        return checkpoint
    ops_bytes = 0
    if layout.ops_path.exists():
        with open(layout.ops_path, "rb") as handle:
            ops_bytes = handle.seek(0, 2)
            if ops_bytes:
                handle.seek(ops_bytes - 1)
                if handle.read(1) != b"\n":  # the original could leave a torn last line
                    ops_bytes = append_durably(layout.ops_path, b"\n")
    ids = layout.ingested_ids
    checkpoint = IngestCheckpoint(
        ops_bytes=ops_bytes,
        ids_bytes=ids.stat().st_size if ids.exists() else 0,
        stream=new_stream_name(),
        hot_day=utc_day() if ops_bytes else None,
    )
    save_state(layout.ingest_checkpoint, checkpoint)
    return checkpoint


def _ingest_batch(
    settings: Settings,
    checkpoint: IngestCheckpoint,
    data: bytes,
    end: SpoolPosition,
    seen: RecentIds,
    report: IngestReport,
) -> IngestCheckpoint:
    frame = spool_frame(data)
    fresh = drop_duplicates(frame, seen)
    ops_bytes, ids_bytes = checkpoint.ops_bytes, checkpoint.ids_bytes
    if fresh.height:
        ops_bytes = append_durably(settings.layout.ops_path, frame_lines(fresh, "line"))
        new_ids = fresh.filter(pl.col("event_id").is_not_null())
        if new_ids.height:
            ids_bytes = append_durably(
                settings.layout.ingested_ids, frame_lines(new_ids, "event_id")
            )
            for event_id in new_ids["event_id"]:
                seen.add(event_id)
        _count_into(report, fresh)
    duplicates = frame.height - fresh.height
    report.batches += 1
    report.bytes_read += len(data)
    report.ingested += fresh.height
    report.duplicates += duplicates
    new_checkpoint = checkpoint.model_copy(
        update={
            "segment": end.segment,
            "offset": end.offset,
            "ops_bytes": ops_bytes,
            "ids_bytes": ids_bytes,
            "ingested_total": checkpoint.ingested_total + fresh.height,
            "duplicates_total": checkpoint.duplicates_total + duplicates,
            "hot_day": checkpoint.hot_day or (utc_day() if fresh.height else None),
        }
    )
    save_state(settings.layout.ingest_checkpoint, new_checkpoint)
    return new_checkpoint


def drop_duplicates(frame: pl.DataFrame, seen: RecentIds) -> pl.DataFrame:
    """Keep records without an id, and the first record of each id not ingested before."""
    if frame.height == 0:
        return frame
    known = [event_id for event_id in frame["event_id"].drop_nulls().unique() if event_id in seen]
    has_id = pl.col("event_id").is_not_null()
    return frame.filter(
        has_id.not_() | (pl.col("event_id").is_first_distinct() & ~pl.col("event_id").is_in(known))
    )


def _count_into(report: IngestReport, fresh: pl.DataFrame) -> None:
    facts = fresh.select(
        pl.col("line").str.json_path_match("$.source").fill_null("mcp").alias("source"),
        pl.col("line").str.json_path_match("$.success").alias("success"),
    )
    for source, count in facts.group_by("source").len().iter_rows():
        report.by_source[source] = report.by_source.get(source, 0) + count
    successes = facts.filter(pl.col("success") == "true").height
    report.successes += successes
    report.failures += fresh.height - successes
