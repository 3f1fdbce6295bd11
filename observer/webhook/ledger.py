"""What the webhook knows about stored ops: the `/stats` window and the ids for idempotency.

The ledger follows the intake (it is its `DurableListener`): every durable batch is counted in spool
order, and records other processes appended (the corrections tailer, `observed()`, another webhook)
are read back from the spool and counted where they stand, before the next own batch. At start it
is rebuilt from the durable files: the tail of the ops (ops.jsonl, then the sealed segments the
history keeps on disk for this), the ingested ids, then what the spool holds beyond the ingestion
checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from observer.files import file_lock
from observer.history.stream import open_stream
from observer.intake.checkpoint import RecentIds, load_checkpoint, load_recent_ids
from observer.intake.group_commit import DurableBatch
from observer.intake.spool import SpoolPosition, read_spool
from observer.settings import Settings
from observer.webhook.window import WINDOW_SIZE, StatsWindow


class Ledger:
    """The stats window and the recent event ids, in step with the spool.

    An answer is the window's size once the op is counted (`ring_size`).
    """

    def __init__(self, settings: Settings, on_durable: Callable[[], None] | None = None) -> None:
        """`on_durable` runs after each durable batch (the webhook wakes ingestion)."""
        self.settings = settings
        self.window = StatsWindow(WINDOW_SIZE)
        self._ids = RecentIds(settings.dedup_window)
        self._pending_ids: set[str] = set()  # accepted, not yet durable
        self._position = SpoolPosition(0, 0)  # how far the window has read the spool
        self._on_durable = on_durable

    def open(self) -> None:
        """Rebuild the window and ids from the durable files (the ops' tail, then the spool)."""
        layout = self.settings.layout
        with file_lock(layout.ingest_lock), open_stream(self.settings) as files:
            checkpoint = load_checkpoint(self.settings)
            for line in files.tail(WINDOW_SIZE).lines:
                self.window.add_line(line)
            self._ids = load_recent_ids(self.settings)
            self._position = checkpoint.position
            self._read_spool_until(None)

    # ── idempotency ─────────────────────────────────────────────────────────────────────────────

    def is_duplicate(self, event_id: str | None) -> bool:
        """Whether an op with this id is stored, or accepted and on its way to the disk."""
        return event_id is not None and (event_id in self._ids or event_id in self._pending_ids)

    def expect(self, event_ids: Sequence[str]) -> None:
        """Ops with these ids are on their way: a retry arriving meanwhile is a duplicate."""
        self._pending_ids.update(event_ids)

    # ── following the intake ────────────────────────────────────────────────────────────────────

    def answers(self, batch: DurableBatch[int]) -> Sequence[int]:
        """Each submission's answer: the window's size once its last op is counted (what other
        writers appended before the batch is counted first)."""
        if self._position < batch.start:
            self._read_spool_until(batch.start)
        size = self.window.size
        counted = len(self.window)
        answers = []
        for submission in batch.submissions:
            counted += len(submission.ops)
            answers.append(min(counted, size))
        return answers

    def durable(self, batch: DurableBatch[int]) -> None:
        """Count a durable batch (its answers were asked for first)."""
        window = self.window
        for submission in batch.submissions:
            if submission.event_ids:
                self._pending_ids.difference_update(submission.event_ids)
                for event_id in submission.event_ids:
                    self._ids.add(event_id)
            window.add_ops(submission.ops)
        self._position = batch.end
        if self._on_durable is not None:
            self._on_durable()

    def refused(self, event_ids: Sequence[str]) -> None:
        """The ops with these ids were not kept: a retry is a new op again."""
        self._pending_ids.difference_update(event_ids)

    def catch_up(self, in_flight: bool) -> None:
        """Count records other processes appended since the last look (for /stats and /health);
        not while an own batch is in flight, whose records would otherwise be read first."""
        if not in_flight:
            self._read_spool_until(None)

    def _read_spool_until(self, until: SpoolPosition | None) -> None:
        while True:
            chunk = read_spool(self.settings.layout.spool_dir, self._position, until=until)
            for record in chunk.records:
                if record.event_id is not None:
                    if record.event_id in self._ids:
                        continue
                    self._ids.add(record.event_id)
                self.window.add_line(record.line)
            if chunk.end == self._position:
                return
            self._position = chunk.end
