"""Ingestion: move spooled records into ops.jsonl, in order, exactly once, through polars.

The checkpoint records where the spool was read up to *and* how long ops.jsonl and the id log were
when it was written. A run that dies after appending but before its checkpoint leaves longer files;
the next run cuts them back to the checkpoint and appends again, so nothing is lost or doubled.
Records carrying an `event_id` already ingested within the dedup window are dropped (idempotent
retries, and a corrections tailer that re-records after a crash).
"""

from __future__ import annotations

import io
import time

import polars as pl
from pydantic import BaseModel, Field

from observer.ingest_state import (
    IngestCheckpoint,
    RecentIds,
    checkpoint_path,
    ids_path,
    load_recent_ids,
    lock_path,
)
from observer.settings import Settings
from observer.store import (
    SpoolPosition,
    append_durably,
    delete_segments_before,
    file_lock,
    load_state,
    read_spool,
    save_state,
    truncate_to,
)

DEFAULT_BATCH_BYTES = 32 * 1024 * 1024


class IngestReport(BaseModel):
    """What one ingestion run did, for its logs and its table artifact."""

    ingested: int = 0
    duplicates: int = 0
    batches: int = 0
    bytes_read: int = 0
    torn_bytes: int = 0
    repaired_crash: bool = False
    successes: int = 0
    failures: int = 0
    by_source: dict[str, int] = Field(default_factory=dict)
    ingested_total: int = 0
    ops_bytes: int = 0
    seconds: float = 0.0


def drain_spool(
    settings: Settings,
    *,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    max_seconds: float | None = None,
) -> IngestReport:
    """Move every complete spooled record into ops.jsonl; batch by batch, each one checkpointed.

    Only one ingester runs at a time (a file lock); a second caller waits for the first.
    `max_seconds` bounds a run under a constant stream of events: what is left waits for the next.
    """
    started = time.monotonic()
    report = IngestReport()
    with file_lock(lock_path(settings)):
        checkpoint = _load_checkpoint(settings)
        report.repaired_crash = truncate_to(settings.ops_path, checkpoint.ops_bytes) | truncate_to(
            ids_path(settings), checkpoint.ids_bytes
        )
        seen = load_recent_ids(settings)
        while max_seconds is None or time.monotonic() - started < max_seconds:
            chunk = read_spool(settings.spool_dir, checkpoint.position, max_bytes=batch_bytes)
            if chunk.end == checkpoint.position:
                break
            checkpoint = _ingest_batch(settings, checkpoint, chunk.data, chunk.end, seen, report)
            report.torn_bytes += chunk.torn_bytes
            delete_segments_before(settings.spool_dir, checkpoint.segment)
        report.ingested_total = checkpoint.ingested_total
        report.ops_bytes = checkpoint.ops_bytes
    report.seconds = round(time.monotonic() - started, 4)
    return report


def _load_checkpoint(settings: Settings) -> IngestCheckpoint:
    """The checkpoint; on first use an existing ops.jsonl (e.g. the original's) is adopted as is."""
    path = checkpoint_path(settings)
    if path.exists():
        return load_state(path, IngestCheckpoint)
    ops_bytes = 0
    if settings.ops_path.exists():
        with open(settings.ops_path, "rb") as handle:
            ops_bytes = handle.seek(0, 2)
            if ops_bytes:
                handle.seek(ops_bytes - 1)
                if handle.read(1) != b"\n":  # the original could leave a torn last line
                    ops_bytes = append_durably(settings.ops_path, b"\n")
    ids = ids_path(settings)
    checkpoint = IngestCheckpoint(
        ops_bytes=ops_bytes, ids_bytes=ids.stat().st_size if ids.exists() else 0
    )
    save_state(path, checkpoint)
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
        ops_bytes = append_durably(settings.ops_path, frame_lines(fresh, "line"))
        new_ids = fresh.filter(pl.col("event_id").is_not_null())
        if new_ids.height:
            ids_bytes = append_durably(ids_path(settings), frame_lines(new_ids, "event_id"))
            for event_id in new_ids["event_id"]:
                seen.add(event_id)
        _count_into(report, fresh)
    duplicates = frame.height - fresh.height
    report.batches += 1
    report.bytes_read += len(data)
    report.ingested += fresh.height
    report.duplicates += duplicates
    new_checkpoint = IngestCheckpoint(
        segment=end.segment,
        offset=end.offset,
        ops_bytes=ops_bytes,
        ids_bytes=ids_bytes,
        ingested_total=checkpoint.ingested_total + fresh.height,
        duplicates_total=checkpoint.duplicates_total + duplicates,
    )
    save_state(checkpoint_path(settings), new_checkpoint)
    return new_checkpoint


def spool_frame(data: bytes) -> pl.DataFrame:
    """Spool records as a frame of (event_id, line); an empty id becomes null."""
    if not data:
        return pl.DataFrame(schema={"event_id": pl.String, "line": pl.String})
    return pl.read_csv(
        io.BytesIO(data),
        has_header=False,
        separator="\t",
        quote_char=None,
        schema={"event_id": pl.String, "line": pl.String},
        empty_string_is_null=True,
    )


def drop_duplicates(frame: pl.DataFrame, seen: RecentIds) -> pl.DataFrame:
    """Keep records without an id, and the first record of each id not ingested before."""
    if frame.height == 0:
        return frame
    known = [event_id for event_id in frame["event_id"].drop_nulls().unique() if event_id in seen]
    has_id = pl.col("event_id").is_not_null()
    return frame.filter(
        has_id.not_() | (pl.col("event_id").is_first_distinct() & ~pl.col("event_id").is_in(known))
    )


def frame_lines(frame: pl.DataFrame, column: str) -> bytes:
    """One column written as raw lines, exactly as stored (no quoting, no header)."""
    buffer = io.BytesIO()
    frame.select(column).write_csv(buffer, include_header=False, quote_style="never")
    return buffer.getvalue()


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
