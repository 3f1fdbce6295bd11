"""Durable intake: every op enters Observer here, and is on disk (fsync) before anyone is told so.

Two doors onto the same spool:
- `record_ops()`, synchronous, for flows and library callers (the corrections tailer, `observed()`);
- `Intake`, the webhook's: requests queue their op and await it; everything queued in one turn of
  the event loop is written and fsync'd as a single batch (group commit), so one fsync covers many
  requests.

`Intake` also keeps the stats window and the recent event ids (idempotency) in step with the spool,
including records other processes appended, which it reads back from the spool in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

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
from observer.window import WINDOW_SIZE, StatsWindow

log = logging.getLogger("observer.intake")

MAX_PENDING_BYTES = 64 * 1024 * 1024


class Overloaded(RuntimeError):
    """Too much is queued for the disk; the client should retry shortly (503 + Retry-After)."""


class WriteFailed(RuntimeError):
    """The spool could not be written; nothing of the batch was kept (503 + Retry-After)."""


@dataclass(frozen=True)
class Accepted:
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


class Intake:
    """The webhook's group-commit writer plus the stats window it keeps current.

    Everything runs on the event loop's thread. A request queues its record and awaits it; the
    first one queued schedules a flush with `call_soon`, which runs once the loop has handled every
    request that was ready in the same turn. The flush writes the whole batch and fsyncs it once,
    blocking the loop for that fsync: on this kind of machine a hand-over to a writer thread and
    back cost more than the fsync itself, and nothing else in this process has to run meanwhile.
    """

    def __init__(self, settings: Settings, on_durable: Callable[[], None] | None = None) -> None:
        """`on_durable` runs after each durable batch."""
        self.settings = settings
        self.window = StatsWindow(WINDOW_SIZE)
        self._writer = SpoolWriter(settings.spool_dir, settings.spool_segment_bytes)
        self._ids = RecentIds(settings.dedup_window)
        self._pending_ids: set[str] = set()  # queued, not yet durable
        self._position = SpoolPosition(0, 0)  # how far the window has read the spool
        self._queue: list[_Pending] = []
        self._queued_bytes = 0
        self._flush_scheduled = False
        self._on_durable = on_durable
        self.write_errors = 0

    # ── life cycle ──────────────────────────────────────────────────────────────────────────────

    def open(self) -> None:
        """Rebuild the window and ids from the durable files (ops.jsonl's tail, then the spool)."""
        with file_lock(lock_path(self.settings)):
            checkpoint = load_state(checkpoint_path(self.settings), IngestCheckpoint)
            for line in read_tail(self.settings.ops_path, WINDOW_SIZE).lines:
                self.window.add_line(line)
            self._ids = load_recent_ids(self.settings)
            self._position = checkpoint.position
            self._read_spool_until(None)

    def close(self) -> None:
        """Write what is still queued, then release the spool."""
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
            len(self._queue) >= self.settings.max_pending_events
            or self._queued_bytes + len(record) > MAX_PENDING_BYTES
        ):
            raise Overloaded("the intake queue is full")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        if event_id is not None:
            self._pending_ids.add(event_id)
        self._queue.append(_Pending(event_id, fields, record, future))
        self._queued_bytes += len(record)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def catch_up(self) -> None:
        """Count records other processes appended since the last look (for /stats and /health)."""
        self._read_spool_until(None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ── the flush ───────────────────────────────────────────────────────────────────────────────

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._queue, self._queued_bytes = self._queue, [], 0
        if not batch:
            return
        for item in batch:
            if item.event_id is not None:
                self._pending_ids.discard(item.event_id)
        try:
            start, end = self._writer.append(b"".join(item.record for item in batch))
        except OSError as exc:
            self.write_errors += 1
            log.error("spool write failed, %d event(s) refused: %s", len(batch), exc)
            failure = WriteFailed(f"cannot write the spool: {exc.strerror or exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
            return
        if self._position < start:
            self._read_spool_until(start)  # other writers' records come first, in order
        for item in batch:
            if item.event_id is not None:
                self._ids.add(item.event_id)
            self.window.add_fields(item.fields)
            if not item.future.done():  # a client that went away cancelled its wait
                item.future.set_result(Accepted(ring_size=len(self.window)))
        self._position = end
        if self._on_durable is not None:
            self._on_durable()

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
