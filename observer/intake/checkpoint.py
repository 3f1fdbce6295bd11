"""How far ingestion has consumed the spool, readable without polars: its checkpoint, the event ids it
has ingested, and how much of the spool still waits. The webhook reads this at start-up and for
`/health`; the polars work itself is in `observer.pipelines.ingest`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from observer.files import count_lines, load_state, read_tail
from observer.intake.spool import SpoolPosition, list_segments, segment_end, segment_path
from observer.settings import Settings


class IngestCheckpoint(BaseModel):
    """Where ingestion stands; written atomically after each batch is durable in ops.jsonl, and
    after each seal of ops.jsonl (observer/history/stream.py).

    `segment`/`offset` are the spool's; `ops_bytes` is the hot ops.jsonl's length, whose first
    byte is at `hot_base` in the host's stream of ops (`stream`, named once: the history table
    tells one host's streams apart by it, so a host whose data dir was wiped never passes for the
    old one)."""

    segment: int = 0
    offset: int = 0
    ops_bytes: int = 0
    ids_bytes: int = 0
    ingested_total: int = 0
    duplicates_total: int = 0
    stream: str = ""
    hot_base: int = 0
    hot_day: str | None = None  # the UTC day ops.jsonl got its first op since its last seal

    @property
    def position(self) -> SpoolPosition:
        return SpoolPosition(self.segment, self.offset)

    @property
    def ops_end(self) -> int:
        """The stream position just past the hot file's last byte."""
        return self.hot_base + self.ops_bytes


class RecentIds:
    """The last N event ids, oldest dropped first: the bounded memory behind idempotency."""

    def __init__(self, capacity: int, ids: Iterable[str] = ()) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        for event_id in ids:
            self.add(event_id)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


def _waiting_segments(settings: Settings, checkpoint: IngestCheckpoint) -> list[tuple[Path, int]]:
    """The spool segments ingestion has not finished, each with where its unread part starts."""
    spool_dir = settings.layout.spool_dir
    return [
        (
            segment_path(spool_dir, segment),
            checkpoint.offset if segment == checkpoint.segment else 0,
        )
        for segment in list_segments(spool_dir)
        if segment >= checkpoint.segment
    ]


def spool_bytes_waiting(settings: Settings, checkpoint: IngestCheckpoint | None = None) -> int:
    """Spool bytes written but not ingested yet (by any producer): a binary search for the end of
    each waiting segment's records."""
    waiting = 0
    for path, start in _waiting_segments(settings, checkpoint or load_checkpoint(settings)):
        waiting += max(0, segment_end(path, start) - start)
    return waiting


def spool_backlog(settings: Settings, checkpoint: IngestCheckpoint) -> tuple[int, int]:
    """Records and bytes written to the spool but not ingested yet (reads what waits)."""
    segments = _waiting_segments(settings, checkpoint)
    records = sum(count_lines(path, start) for path, start in segments)
    return records, spool_bytes_waiting(settings, checkpoint)


def load_recent_ids(settings: Settings) -> RecentIds:
    lines = read_tail(settings.layout.ingested_ids, settings.dedup_window).lines
    return RecentIds(settings.dedup_window, (line.decode() for line in lines))


def load_checkpoint(settings: Settings) -> IngestCheckpoint:
    """The checkpoint as last written (the defaults before the first ingestion)."""
    return load_state(settings.layout.ingest_checkpoint, IngestCheckpoint)
