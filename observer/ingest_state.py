"""Ingestion's durable state, readable without polars: its checkpoint, the ids it has ingested,
and how much of the spool still waits. The webhook and `observed()` import this on their start-up
path; the polars work itself is in `observer.ingest`."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from observer.settings import Settings
from observer.store import (
    SpoolPosition,
    list_segments,
    load_state,
    read_tail,
    segment_path,
)


class IngestCheckpoint(BaseModel):
    """Where ingestion stands; written atomically after each batch is durable in ops.jsonl."""

    segment: int = 0
    offset: int = 0
    ops_bytes: int = 0
    ids_bytes: int = 0
    ingested_total: int = 0
    duplicates_total: int = 0

    @property
    def position(self) -> SpoolPosition:
        return SpoolPosition(self.segment, self.offset)


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


def ids_path(settings: Settings) -> Path:
    return settings.state_dir / "ingested-ids.txt"


def checkpoint_path(settings: Settings) -> Path:
    return settings.state_dir / "ingest.json"


def lock_path(settings: Settings) -> Path:
    return settings.state_dir / "ingest.lock"


def spool_bytes_waiting(settings: Settings, checkpoint: IngestCheckpoint | None = None) -> int:
    """Spool bytes written but not ingested yet (by any producer): a few stat calls."""
    if checkpoint is None:
        checkpoint = load_state(checkpoint_path(settings), IngestCheckpoint)
    waiting = 0
    for segment in list_segments(settings.spool_dir):
        if segment < checkpoint.segment:
            continue
        with contextlib.suppress(FileNotFoundError):
            size = segment_path(settings.spool_dir, segment).stat().st_size
            waiting += size - (checkpoint.offset if segment == checkpoint.segment else 0)
    return waiting


def load_recent_ids(settings: Settings) -> RecentIds:
    lines = read_tail(ids_path(settings), settings.dedup_window).lines
    return RecentIds(settings.dedup_window, (line.decode() for line in lines))
