"""Durable intake: every op enters Observer here, and is on disk (fsync) before anyone is told so.

Two doors onto the same spool:
- `record_ops()`, synchronous, for flows and library callers (the corrections tailer, `observed()`);
- `Intake`, the webhook's: requests queue their op and await it; one writer thread writes and fsyncs
  everything queued meanwhile as a single batch (group commit), so one fsync covers many requests.

`Intake` also keeps the stats window and the recent event ids (idempotency) in step with the spool,
including records other processes appended, which it reads back from the spool in order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
    payload = b"".join(encode_record(event_id, op.to_line()) for event_id, op in entries)
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
    """The webhook's group-commit writer plus the stats window it keeps current."""

    def __init__(self, settings: Settings, on_durable: Callable[[], None] | None = None) -> None:
        """`on_durable` runs on the event loop after each durable batch."""
        self.settings = settings
        self.window = StatsWindow(WINDOW_SIZE)
        self._writer = SpoolWriter(settings.spool_dir, settings.spool_segment_bytes)
        self._ids = RecentIds(settings.dedup_window)
        self._pending_ids: set[str] = set()  # queued, not yet durable
        self._ids_lock = threading.Lock()
        self._window_lock = threading.Lock()  # window, spool position; held across each append
        self._position = SpoolPosition(0, 0)
        self._queue: list[_Pending] = []
        self._queued_bytes = 0
        self._wakeup = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._on_durable = on_durable
        self.write_errors = 0

    # ── life cycle ──────────────────────────────────────────────────────────────────────────────

    def open(self) -> None:
        """Rebuild the window and ids from the durable files, then start the writer thread."""
        with file_lock(lock_path(self.settings)):
            checkpoint = load_state(checkpoint_path(self.settings), IngestCheckpoint)
            for line in read_tail(self.settings.ops_path, WINDOW_SIZE).lines:
                self.window.add_line(line)
            self._ids = load_recent_ids(self.settings)
            self._position = checkpoint.position
            self._read_spool_until(None)
        self._thread = threading.Thread(target=self._run, name="observer-spool-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        with self._wakeup:
            self._closing = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._writer.shutdown()

    # ── the request path ────────────────────────────────────────────────────────────────────────

    async def submit(self, event_id: str | None, fields: dict[str, Any]) -> Accepted:
        """Queue one op (its validated fields) and return once it is durable (or raise Overloaded /
        WriteFailed)."""
        if event_id is not None:
            with self._ids_lock:
                if event_id in self._ids or event_id in self._pending_ids:
                    return Accepted(ring_size=len(self.window), duplicate=True)
                self._pending_ids.add(event_id)
        record = encode_record(event_id, op_line(fields))
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        with self._wakeup:
            full = (
                len(self._queue) >= self.settings.max_pending_events
                or self._queued_bytes + len(record) > MAX_PENDING_BYTES
            )
            if not full and not self._closing:
                self._queue.append(_Pending(event_id, fields, record, future))
                self._queued_bytes += len(record)
                self._wakeup.notify()
        if full or self._closing:
            self._forget_ids([event_id])
            raise Overloaded("the intake queue is full")
        return await future

    def catch_up(self) -> None:
        """Count records other processes appended since the last look (for /stats and /health)."""
        with self._window_lock:
            self._read_spool_until(None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ── the writer thread ───────────────────────────────────────────────────────────────────────

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._closing:
                    self._wakeup.wait()
                if not self._queue and self._closing:
                    return
                batch, self._queue, self._queued_bytes = self._queue, [], 0
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        payload = b"".join(item.record for item in batch)
        with self._window_lock:
            try:
                start, end = self._writer.append(payload)
            except OSError as exc:
                self.write_errors += 1
                log.error("spool write failed, %d event(s) refused: %s", len(batch), exc)
                self._forget_ids(item.event_id for item in batch)
                self._settle(batch, WriteFailed(f"cannot write the spool: {exc.strerror or exc}"))
                return
            self._remember_ids(item.event_id for item in batch)
            if self._position < start:
                self._read_spool_until(start)  # other writers' records come first, in order
            sizes = []
            for item in batch:
                self.window.add_fields(item.fields)
                sizes.append(len(self.window))
            self._position = end
        self._settle(batch, sizes, self._on_durable)

    def _settle(
        self,
        batch: list[_Pending],
        outcome: list[int] | Exception,
        then: Callable[[], None] | None = None,
    ) -> None:
        # One hand-over to the event loop per batch, whatever its size.
        loop = batch[0].future.get_loop()
        loop.call_soon_threadsafe(_settle_futures, batch, outcome, then)

    def _read_spool_until(self, until: SpoolPosition | None) -> None:
        while True:
            chunk = read_spool(self.settings.spool_dir, self._position, until=until)
            for record in chunk.records:
                if record.event_id is not None:
                    with self._ids_lock:
                        if record.event_id in self._ids:
                            continue
                        self._ids.add(record.event_id)
                self.window.add_line(record.line)
            if chunk.end == self._position:
                return
            self._position = chunk.end

    def _forget_ids(self, event_ids: Iterable[str | None]) -> None:
        with self._ids_lock:
            for event_id in event_ids:
                if event_id is not None:
                    self._pending_ids.discard(event_id)

    def _remember_ids(self, event_ids: Iterable[str | None]) -> None:
        with self._ids_lock:
            for event_id in event_ids:
                if event_id is not None:
                    self._pending_ids.discard(event_id)
                    self._ids.add(event_id)


def _settle_futures(
    batch: list[_Pending], outcome: list[int] | Exception, then: Callable[[], None] | None
) -> None:
    if then is not None:
        then()
    for index, item in enumerate(batch):
        if item.future.done():
            continue
        if isinstance(outcome, Exception):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(Accepted(ring_size=outcome[index]))
