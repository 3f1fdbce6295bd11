"""The webhook's door onto the spool: group commit, with the fsync in a helper process.

Requests queue their records with a callback; what is queued is written as one batch and fsync'd
once by a child process (`observer.intake.syncer`). While that fsync runs, the next batches are
written and their fsyncs asked for: the moment the first ends, the child starts one fsync that
covers every one of them. Each request's callback runs, in spool order, only once its
batch is durable: one pass over the batch answers every request in it.

The intake only writes and makes durable. Whoever keeps state about what is stored (the webhook's
stats window and idempotency ids) follows it through a `DurableListener`: asked for each durable
batch's answers, then told to count it, batch after batch in spool order, with the positions it
took; and told of each refused one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from observer.errors import IntakeError, Overloaded, WriteFailed
from observer.intake.spool import SpoolPosition, SpoolWriter, encode_record
from observer.intake.syncer import Syncer
from observer.ops import op_line
from observer.settings import Settings

log = logging.getLogger("observer.intake")

MAX_PENDING_BYTES = 64 * 1024 * 1024
#: fsyncs asked of the child and not answered yet, at most. The child answers every request that
#: queued during a flush with one fsync, so a request written at once joins the next fsync, where a
#: request held back behind the limit waits for an answer, then for one more fsync. With one, the
#: disk idled while the answer went to the loop; with two, 16 connections got 5.9 requests per
#: fsync and 16,800 req/s, with eight 7.6 and 21,600, at the same fsyncs per second (both traced). The limit
#: keeps the requests waiting in the child's pipe to a few lines: a full pipe would block the loop.
FSYNCS_IN_FLIGHT = 8

Answer = TypeVar("Answer")


@dataclass(slots=True)
class Submission(Generic[Answer]):
    """Ops one request hands over together: written in one write, made durable by one fsync, and
    kept or refused as a whole. `done` gets the listener's answer, `failed` the reason nothing of
    it was kept. The intake does not read the ops: it hands them to its listener."""

    ops: Sequence[Any]  # each op's validated fields
    event_ids: Sequence[str]  # the ids among them (an op may have none)
    payload: bytes  # their spool records
    done: Callable[[Answer], None]
    failed: Callable[[IntakeError], None]


@dataclass
class DurableBatch(Generic[Answer]):
    """A batch written to the spool: from `start` to `end` in one segment (a batch is one write)."""

    start: SpoolPosition
    end: SpoolPosition
    submissions: list[Submission[Answer]]

    @property
    def size(self) -> int:
        return self.end.offset - self.start.offset


class DurableListener(Protocol[Answer]):
    """What follows the intake: told of every batch once durable, and of every refused op.

    Each durable batch gets `answers`, then `durable`, before the next batch gets either; its
    answers may be sent in between (nothing else runs there: it is one callback on the loop).
    """

    def answers(self, batch: DurableBatch[Answer]) -> Sequence[Answer]:
        """The batch is on disk: each submission's answer, in order, as once the batch is counted."""
        ...

    def durable(self, batch: DurableBatch[Answer]) -> None:
        """Count the batch as stored."""
        ...

    def refused(self, event_ids: Sequence[str]) -> None:
        """The ops with these ids were not kept (their requests get a 503)."""
        ...


def _answer(submissions: list[Submission[Answer]], answers: Sequence[Answer]) -> None:
    for submission, answer in zip(submissions, answers, strict=True):
        submission.done(answer)


class Intake(Generic[Answer]):
    """Group commit onto the spool: `put` hands over a request's ops and a callback, which runs
    once they are durable; there is no task or future per request. (`submit` is the same for one
    op, awaited.)

    The first submission queued schedules a flush with `call_soon`, which runs once the loop has
    handled every request that was ready in the same turn. The flush writes the batch and asks the
    fsync child to make it durable. While that fsync runs the loop keeps serving: each later flush
    writes what queued meanwhile and asks for an fsync too, and the child covers all of them with
    one fsync as soon as the first ends; beyond `FSYNCS_IN_FLIGHT` asked for, what arrives queues
    until an answer, and is written, with its fsync asked for, before the answered requests are
    sent their replies (the disk works while the loop answers). Without the child (it could not
    start, or died) the flush fsyncs on the loop's thread. So does `put` for the request of a sole client (`sole_client` says
    one client is connected) when nothing else is queued or in flight: it writes and fsyncs it at
    once, with no loop turn and no round trip to the child.
    """

    def __init__(self, settings: Settings, listener: DurableListener[Answer]) -> None:
        self.settings = settings
        self._listener = listener
        self._writer = SpoolWriter(settings.layout.spool_dir, settings.spool_segment_bytes)
        self._syncer: Syncer | None = None
        self._queue: list[Submission[Answer]] = []
        self._unsynced: deque[DurableBatch[Answer]] = deque()  # written, fsync not answered yet
        #: The ends whose fsync the child was asked for, oldest first (None: refused meanwhile).
        self._requested: deque[SpoolPosition | None] = deque()
        self._waiting_events = 0  # queued or written, not yet durable
        self._waiting_bytes = 0
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None  # asking for it is a getpid() call
        self.write_errors = 0
        #: Whether exactly one client is connected (set by the webhook's server; None elsewhere).
        self.sole_client: Callable[[], bool] | None = None

    # ── life cycle ──────────────────────────────────────────────────────────────────────────────

    def open(self) -> None:
        """Start the fsync child when running on an event loop (else fsync inline)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loop = loop
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
        self._requested.clear()
        if syncer is not None:
            syncer.stop()
        self._flush()
        self._writer.shutdown()

    # ── the request path ────────────────────────────────────────────────────────────────────────

    def put(
        self,
        ops: Sequence[Any],
        event_ids: Sequence[str],
        payload: bytes,
        done: Callable[[Answer], None],
        failed: Callable[[IntakeError], None],
    ) -> None:
        """Queue ops written together (`event_ids`: the ids among them; `payload`: their spool
        records, in order). Once durable the listener's answer goes to `done`; if the disk refuses
        them, `failed` gets why (nothing of them kept). Either may run before `put` returns. Raises
        Overloaded at once when the queue cannot take them all."""
        if (
            self._waiting_events + len(ops) > self.settings.max_pending_events
            or self._waiting_bytes + len(payload) > MAX_PENDING_BYTES
        ):
            raise Overloaded("the intake queue is full")
        self._queue.append(Submission(ops, event_ids, payload, done, failed))
        self._waiting_events += len(ops)
        self._waiting_bytes += len(payload)
        if not self._flush_scheduled and len(self._requested) < FSYNCS_IN_FLIGHT:
            # (At the limit, the next answer flushes what queued: no call to schedule.)
            if self._alone():
                self._flush(alone=True)
                return
            self._flush_scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._flush)

    async def submit(self, event_id: str | None, fields: dict[str, Any]) -> Answer:
        """One op (its validated fields); return the listener's answer once it is durable, or
        raise Overloaded / WriteFailed (nothing of it kept)."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        def done(answer: Answer) -> None:
            if not future.done():  # a caller that went away cancelled its wait
                future.set_result(answer)

        def failed(error: IntakeError) -> None:
            if not future.done():
                future.set_exception(error)

        record = encode_record(event_id, op_line(fields))
        self.put([fields], () if event_id is None else (event_id,), record, done, failed)
        return await future

    @property
    def queued(self) -> int:
        """Events accepted and not durable yet."""
        return self._waiting_events

    @property
    def in_flight(self) -> bool:
        """Whether a batch is written and not yet durable (its records are in the spool already)."""
        return bool(self._unsynced)

    # ── write, then fsync ───────────────────────────────────────────────────────────────────────

    def _flush(self, alone: bool = False) -> None:
        """Write what queued and have it made durable: by the child, or here when `alone` (the
        batch is the only client's one request, see `_alone`)."""
        self._flush_scheduled = False
        if len(self._requested) >= FSYNCS_IN_FLIGHT:
            return  # written and asked for when the child answers
        batch, self._queue = self._queue, []
        if batch:
            payload = b"".join([submission.payload for submission in batch])
            try:
                start, end = self._writer.write(payload)
            except OSError as exc:
                self._refuse([batch], len(payload), exc)
            else:
                self._unsynced.append(DurableBatch(start, end, batch))
        self._sync_next(alone)

    def _sync_next(self, alone: bool = False) -> None:
        """Ask for the fsync of everything written and not asked for yet (fsync it here when
        `alone`, or without the child)."""
        if not self._unsynced:
            return
        end = self._unsynced[-1].end
        requested = self._requested
        if requested and requested[-1] == end:
            return
        if self._syncer is not None and not alone:
            requested.append(end)
            self._syncer.request(self._writer.segment_file(end))
            return
        try:
            self._writer.sync()
        except OSError as exc:
            self._refuse_unsynced(exc)
            return
        self._complete_through(end)

    def _alone(self) -> bool:
        """The only client connected sent the only request queued, and nothing is written or asked
        for: nothing could join its batch, and nothing else would be served during its fsync, so
        it is written and fsync'd at once, here (the loop turn and the child's round trip would
        only delay the answer)."""
        return (
            self.sole_client is not None
            and len(self._queue) == 1
            and not self._unsynced
            and not self._requested
            and self.sole_client()
        )

    def _synced(self, error: int, covered: int) -> None:
        """The child's answer for one fsync, which covered its `covered` oldest requests."""
        end = None
        for _ in range(min(covered, len(self._requested))):
            end = self._requested.popleft()
        owed = []
        if end is not None:  # (None: asked for before a refusal, which took what it covered)
            if error:
                self._refuse_unsynced(OSError(error, os.strerror(error)))
            else:
                owed = self._durable_through(end)
        self._flush()  # the next batch goes to the disk, and its fsync starts, before the answers
        for submissions, answers in owed:
            _answer(submissions, answers)

    def _syncer_lost(self) -> None:
        self._syncer = None
        self._requested.clear()
        self._flush()

    def _complete_through(self, end: SpoolPosition) -> None:
        """Every batch up to `end` is durable (fsync'd here): answer each batch's requests, then
        have the listener count it. The answer leaves before the counting: at one connection
        every request waits for this, and nothing can read the count in between."""
        while batch := self._next_durable(end):
            answers = self._listener.answers(batch)
            try:
                _answer(batch.submissions, answers)
            finally:
                self._settle(batch)

    def _durable_through(
        self, end: SpoolPosition
    ) -> list[tuple[list[Submission[Answer]], Sequence[Answer]]]:
        """Have the listener count, in spool order, every batch up to `end`; return each batch's
        submissions with the answers they are owed (sent by the caller)."""
        owed = []
        while batch := self._next_durable(end):
            owed.append((batch.submissions, self._listener.answers(batch)))
            self._settle(batch)
        return owed

    def _next_durable(self, end: SpoolPosition) -> DurableBatch[Answer] | None:
        """The oldest batch written, if it ends by `end`."""
        if not self._unsynced or self._unsynced[0].end > end:
            return None
        return self._unsynced.popleft()

    def _settle(self, batch: DurableBatch[Answer]) -> None:
        """A durable batch no longer waits: have the listener count it."""
        self._waiting_events -= sum(len(submission.ops) for submission in batch.submissions)
        self._waiting_bytes -= batch.size
        self._listener.durable(batch)

    def _refuse_unsynced(self, exc: OSError) -> None:
        """An fsync failed: no batch still waiting can be called durable. Remove them from the spool
        when no other writer appended after them (else ingestion will still see them)."""
        batches = list(self._unsynced)
        self._unsynced.clear()
        # Answers still due for earlier requests cover nothing any more: what they asked for is
        # refused, and what is written next may take its place in the spool.
        self._requested = deque(None for _ in self._requested)
        if not self._writer.cut_back(batches[0].start, batches[-1].end):
            log.error("could not remove %d refused batch(es) from the spool", len(batches))
        self._refuse([b.submissions for b in batches], sum(b.size for b in batches), exc)

    def _refuse(self, batches: list[list[Submission[Answer]]], size: int, exc: OSError) -> None:
        self.write_errors += 1
        submissions = [submission for batch in batches for submission in batch]
        events = sum(len(submission.ops) for submission in submissions)
        log.error("spool write failed, %d event(s) refused: %s", events, exc)
        failure = WriteFailed(f"cannot write the spool: {exc.strerror or exc}")
        self._waiting_events -= events
        self._waiting_bytes -= size
        self._listener.refused([i for submission in submissions for i in submission.event_ids])
        for submission in submissions:
            submission.failed(failure)
