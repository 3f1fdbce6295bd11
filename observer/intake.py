"""Durable intake: every op enters Observer here, and is on disk (fsync) before anyone is told so.

Two doors onto the same spool:
- `record_ops()`, synchronous, for flows and library callers (the corrections tailer, `observed()`);
- `Intake`, the webhook's: requests queue their op and await it; what is queued is written as one
  batch and fsync'd once by a child process (`observer.syncer`), and what arrives during that
  fsync queues for the next one (group commit).

`Intake` also keeps the stats window and the recent event ids (idempotency) in step with the spool,
including records other processes appended, which it reads back from the spool in order.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from observer.ingest_state import (
    IngestCheckpoint,
    RecentIds,
    checkpoint_path,
    load_recent_ids,
    lock_path,
)
from observer.ops import Op, op_line
from observer.settings import Settings
from observer.store import (
    SpoolPosition,
    SpoolWriter,
    encode_record,
    file_lock,
    load_state,
    read_spool,
    read_tail,
)
from observer.syncer import Syncer
from observer.window import WINDOW_SIZE, StatsWindow

log = logging.getLogger("observer.intake")

MAX_PENDING_BYTES = 64 * 1024 * 1024


class Overloaded(RuntimeError):
    """Too much is queued for the disk; the client should retry shortly (503 + Retry-After)."""


class WriteFailed(RuntimeError):
    """The spool could not be written; nothing of the batch was kept (503 + Retry-After)."""


class Accepted(NamedTuple):
    ring_size: int
    duplicate: bool = False


def record_ops(settings: Settings, entries: Iterable[tuple[str | None, Op]]) -> int:
    """Append ops (with optional event ids) to the spool durably; returns how many were written.

    The ids make re-recording harmless: ingestion and the stats window keep the first record of an
    id. Raises OSError if the spool cannot be written (nothing is then kept).
    """
    return record_lines(settings, ((event_id, op.to_line()) for event_id, op in entries))


def record_lines(settings: Settings, entries: Iterable[tuple[str | None, bytes]]) -> int:
    """`record_ops` for ops already turned into their lines (a bulk producer skips the model)."""
    payload = b"".join(encode_record(event_id, line) for event_id, line in entries)
    if not payload:
        return 0
    writer = SpoolWriter(settings.spool_dir, settings.spool_segment_bytes)
    try:
        writer.append(payload)
    finally:
        writer.shutdown()
    return payload.count(b"\n")


@dataclass
class _Pending:
    event_id: str | None
    fields: dict[str, Any]
    record: bytes
    future: asyncio.Future[Accepted]


@dataclass
class _Written:
    """A batch written to the spool, waiting for the fsync that makes it durable."""

    start: SpoolPosition
    end: SpoolPosition  # in the same segment: a batch is one write
    items: list[_Pending]

    @property
    def size(self) -> int:
        return self.end.offset - self.start.offset


class Intake:
    """The webhook's group-commit writer plus the stats window it keeps current.

    A request queues its record and awaits it; the first one queued schedules a flush with
    `call_soon`, which runs once the loop has handled every request that was ready in the same
    turn. The flush writes the batch and asks a child process (`observer.syncer`) to fsync it.
    While that fsync runs the loop keeps serving, and what it queues meanwhile is written as one
    batch when the fsync answers (one write and one fsync for all of it). Futures resolve, in
    spool order, only once their batch is durable. Without the child (it could not start, or
    died) the flush fsyncs on the loop's thread.
    """

    def __init__(self, settings: Settings, on_durable: Callable[[], None] | None = None) -> None:
        """`on_durable` runs after each durable batch."""
        self.settings = settings
        self.window = StatsWindow(WINDOW_SIZE)
        self._writer = SpoolWriter(settings.spool_dir, settings.spool_segment_bytes)
        self._syncer: Syncer | None = None
        self._ids = RecentIds(settings.dedup_window)
        self._pending_ids: set[str] = set()  # accepted, not yet durable
        self._position = SpoolPosition(0, 0)  # how far the window has read the spool
        self._queue: list[_Pending] = []
        self._unsynced: deque[_Written] = deque()
        self._syncing_to: SpoolPosition | None = None  # the end the child is fsyncing up to
        self._waiting_events = 0  # queued or written, not yet durable
        self._waiting_bytes = 0
        self._flush_scheduled = False
        self._on_durable = on_durable
        self.write_errors = 0

    # ── life cycle ──────────────────────────────────────────────────────────────────────────────

    def open(self) -> None:
        """Rebuild the window and ids from the durable files (ops.jsonl's tail, then the spool);
        start the fsync child when running on an event loop."""
        with file_lock(lock_path(self.settings)):
            checkpoint = load_state(checkpoint_path(self.settings), IngestCheckpoint)
            for line in read_tail(self.settings.ops_path, WINDOW_SIZE).lines:
                self.window.add_line(line)
            self._ids = load_recent_ids(self.settings)
            self._position = checkpoint.position
            self._read_spool_until(None)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        syncer = Syncer(on_synced=self._synced, on_lost=self._syncer_lost)
        try:
            syncer.start(loop)
        except OSError as exc:
            log.warning("cannot start the fsync helper process (%s); fsyncing inline", exc)
            return
        self._syncer = syncer

    def close(self) -> None:
        """Write and fsync what is still waiting, then release the spool and the child."""
        syncer, self._syncer = self._syncer, None
        self._syncing_to = None
        if syncer is not None:
            syncer.stop()
        self._flush()
        self._writer.shutdown()

    # ── the request path ────────────────────────────────────────────────────────────────────────

    async def submit(self, event_id: str | None, fields: dict[str, Any]) -> Accepted:
        """Queue one op (its validated fields) and return once it is durable (or raise Overloaded /
        WriteFailed)."""
        if event_id is not None and (event_id in self._ids or event_id in self._pending_ids):
            return Accepted(ring_size=len(self.window), duplicate=True)
        record = encode_record(event_id, op_line(fields))
        if (
            self._waiting_events >= self.settings.max_pending_events
            or self._waiting_bytes + len(record) > MAX_PENDING_BYTES
        ):
            raise Overloaded("the intake queue is full")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        if event_id is not None:
            self._pending_ids.add(event_id)
        self._queue.append(_Pending(event_id, fields, record, future))
        self._waiting_events += 1
        self._waiting_bytes += len(record)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def catch_up(self) -> None:
        """Count records other processes appended since the last look (for /stats and /health)."""
        if not self._unsynced:  # else the records of the batches in flight would come first
            self._read_spool_until(None)

    @property
    def queued(self) -> int:
        """Events accepted and not durable yet."""
        return self._waiting_events

    # ── write, then fsync ───────────────────────────────────────────────────────────────────────

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._syncing_to is not None:
            return  # an fsync is running: what is queued meanwhile is written when it answers
        batch, self._queue = self._queue, []
        if batch:
            payload = b"".join(item.record for item in batch)
            try:
                start, end = self._writer.write(payload)
            except OSError as exc:
                self._refuse([batch], len(payload), exc)
            else:
                self._unsynced.append(_Written(start, end, batch))
        self._sync_next()

    def _sync_next(self) -> None:
        """Start the fsync of everything written so far, unless one is already running."""
        if self._syncing_to is not None or not self._unsynced:
            return
        end = self._unsynced[-1].end
        if self._syncer is not None:
            self._syncing_to = end
            self._syncer.request(self._writer.segment_file(end))
            return
        try:
            self._writer.sync()
        except OSError as exc:
            self._refuse_unsynced(exc)
            return
        self._complete_through(end)

    def _synced(self, error: int) -> None:
        """The child's answer for the fsync up to `_syncing_to`."""
        end, self._syncing_to = self._syncing_to, None
        if end is None:
            return
        if error:
            self._refuse_unsynced(OSError(error, os.strerror(error)))
        else:
            self._complete_through(end)
        self._flush()

    def _syncer_lost(self) -> None:
        self._syncer, self._syncing_to = None, None
        self._flush()

    def _complete_through(self, end: SpoolPosition) -> None:
        """Every batch up to `end` is durable: count it, remember its ids, answer its requests."""
        while self._unsynced and self._unsynced[0].end <= end:
            written = self._unsynced.popleft()
            self._waiting_events -= len(written.items)
            self._waiting_bytes -= written.size
            if self._position < written.start:
                self._read_spool_until(written.start)  # other writers' records come first
            for item in written.items:
                if item.event_id is not None:
                    self._pending_ids.discard(item.event_id)
                    self._ids.add(item.event_id)
                self.window.add_fields(item.fields)
                if not item.future.done():  # a client that went away cancelled its wait
                    item.future.set_result(Accepted(ring_size=len(self.window)))
            self._position = written.end
        if self._on_durable is not None:
            self._on_durable()

    def _refuse_unsynced(self, exc: OSError) -> None:
        """An fsync failed: no batch still waiting can be called durable. Remove them from the spool
        when no other writer appended after them (else ingestion will still see them)."""
        batches = list(self._unsynced)
        self._unsynced.clear()
        if not self._writer.cut_back(batches[0].start, batches[-1].end):
            log.error("could not remove %d refused batch(es) from the spool", len(batches))
        self._refuse([b.items for b in batches], sum(b.size for b in batches), exc)

    def _refuse(self, batches: list[list[_Pending]], size: int, exc: OSError) -> None:
        self.write_errors += 1
        count = sum(len(items) for items in batches)
        log.error("spool write failed, %d event(s) refused: %s", count, exc)
        failure = WriteFailed(f"cannot write the spool: {exc.strerror or exc}")
        self._waiting_events -= count
        self._waiting_bytes -= size
        for items in batches:
            for item in items:
                if item.event_id is not None:
                    self._pending_ids.discard(item.event_id)
                if not item.future.done():
                    item.future.set_exception(failure)

    def _read_spool_until(self, until: SpoolPosition | None) -> None:
        while True:
            chunk = read_spool(self.settings.spool_dir, self._position, until=until)
            for record in chunk.records:
                if record.event_id is not None:
                    if record.event_id in self._ids:
                        continue
                    self._ids.add(record.event_id)
                self.window.add_line(record.line)
            if chunk.end == self._position:
                return
            self._position = chunk.end
