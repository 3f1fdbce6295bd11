"""What `POST /event` and `POST /events` do with a request body, whatever carried the bytes.

The ASGI app and the HTTP/1.1 protocol's direct path (`observer.webhook.protocol`) both hand the
body here with a `Reply` callback and send what it is given: the answer is built once, in one
place, whichever way the request came. A reply comes at once for a body that is refused or holds
only duplicates, and otherwise once the request's ops are durable (or the disk refused them: 503,
nothing kept).

`POST /events` takes up to `OBSERVER_MAX_BATCH` events, a JSON array or NDJSON (one event per
line, `Content-Type: application/x-ndjson`). Each event is validated as `POST /event` validates
a body; the valid ones that are new are written together (one write, one fsync, kept or refused
as a whole), and the answer holds one result per event, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from observer.errors import DecodeFailed, EventError, IntakeError
from observer.intake.group_commit import Intake
from observer.intake.spool import encode_record, encode_records, records_without_ids
from observer.ops import now_timestamp
from observer.settings import Settings
from observer.values import json_type_name
from observer.webhook.events import (
    FastEvent,
    Ready,
    batch_item,
    decode_events,
    line_of,
    lines_of,
    load_unusual,
    ready_event,
)
from observer.webhook.ledger import Ledger

log = logging.getLogger("observer.webhook")

Read = TypeVar("Read")
Headers = Sequence[tuple[bytes, bytes]]
#: How an answer leaves: status, JSON payload, headers beyond content-type and content-length.
Reply = Callable[[int, bytes, Headers], None]

NO_HEADERS: Headers = ()
RETRY_AFTER: Headers = ((b"retry-after", b"1"),)
NDJSON = b"application/x-ndjson"

_ACCEPTED = {"accepted": True}
_DECODED_ONLY = {FastEvent}
_DUPLICATE = {"accepted": True, "duplicate": True}


def error_payload(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _read(reply: Reply, read: Callable[..., Read], *body: Any) -> Read | None:
    """What `read` makes of a request's body, or None once its refusal is answered: the
    `EventError`'s status and message, or, for a body that broke the validation itself (a bug,
    not the client's), a JSON 500 and the traceback in the log; nothing kept either way."""
    try:
        return read(*body)
    except EventError as exc:
        reply(exc.status, orjson.dumps(exc.to_json()), NO_HEADERS)
    except Exception:
        log.exception("a request body could not be validated")
        message = "the body could not be validated (a webhook bug; nothing was kept)"
        reply(500, error_payload(message), NO_HEADERS)
    return None


class EventDoor:
    """Validation, idempotency and the hand-over to the intake for `/event` and `/events`."""

    def __init__(self, settings: Settings, ledger: Ledger, intake: Intake[int]) -> None:
        self.max_batch = settings.max_batch
        self.ledger = ledger
        self.intake = intake

    # ── POST /event ─────────────────────────────────────────────────────────────────────────────

    def post_event(self, body: bytes, reply: Reply) -> None:
        """One event: 200 `{"accepted":true,"ring_size":N}` once durable (`"duplicate":true` when
        its id is already stored), 400/422 naming what is wrong, 503 when nothing was kept."""
        event = _read(reply, ready_event, body)
        if event is None:
            return
        ledger = self.ledger
        event_id = event.event_id
        if ledger.is_duplicate(event_id):
            answer = b'{"accepted":true,"ring_size":%d,"duplicate":true}' % len(ledger.window)
            reply(200, answer, NO_HEADERS)
            return

        def done(ring_size: int) -> None:
            reply(200, b'{"accepted":true,"ring_size":%d}' % ring_size, NO_HEADERS)

        event_ids = () if event_id is None else (event_id,)
        self._put([event.op], event_ids, encode_record(event_id, event.line), done, reply)

    # ── POST /events ────────────────────────────────────────────────────────────────────────────

    def post_events(self, body: bytes, content_type: bytes | None, reply: Reply) -> None:
        """A batch: 200 with one result per event once the new valid ones are durable; 400 when the
        body is no batch, 413 over `max_batch` events, 503 when nothing was kept."""
        batch = _read(reply, self._sorted_batch, body, content_type)
        if batch is None:
            return
        counts = {
            "accepted": len(batch.ops),
            "duplicates": batch.duplicates,
            "rejected": batch.rejected,
        }

        def done(ring_size: int) -> None:
            answer = counts | {"ring_size": ring_size, "results": batch.results}
            reply(200, orjson.dumps(answer), NO_HEADERS)

        if not batch.ops:
            done(len(self.ledger.window))
            return
        self._put(batch.ops, list(batch.claimed), batch.records(), done, reply)

    def _sorted_batch(self, body: bytes, content_type: bytes | None) -> SortedBatch:
        now = now_timestamp()  # one arrival time for the batch's events without a timestamp
        items = self._items(body, content_type)
        return _sort_out([batch_item(item, now) for item in items], self.ledger)

    def _items(self, body: bytes, content_type: bytes | None) -> list[Any]:
        """The batch's events: decoded at once when every one has its fields' JSON types, else
        parsed JSON values; for NDJSON the lines (each parsed on its own, so that a bad line is one
        bad event)."""
        if content_type is not None and media_type(content_type) == NDJSON:
            items: list[Any] = [line for line in body.split(b"\n") if line.strip()]
        else:
            try:
                items = decode_events(body)
            except DecodeFailed:
                items = self._parsed_items(body)
        if len(items) > self.max_batch:
            raise EventError(
                f"a batch holds at most {self.max_batch} events (OBSERVER_MAX_BATCH),"
                f" got {len(items)}",
                status=413,
            )
        return items

    @staticmethod
    def _parsed_items(body: bytes) -> list[Any]:
        try:
            items = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            try:
                items = load_unusual(body, exc)
            except EventError as error:
                raise EventError(
                    f"{error}; a batch is a JSON array of events, or one event per line with"
                    f" Content-Type: {NDJSON.decode()}",
                    status=400,
                ) from None
        if type(items) is not list:
            raise EventError(
                f"the body must be a JSON array of events, got {json_type_name(items)}",
                status=400,
            )
        return items

    # ── both ────────────────────────────────────────────────────────────────────────────────────

    def _put(
        self,
        ops: list[Any],
        event_ids: Sequence[str],
        payload: bytes,
        done: Callable[[int], None],
        reply: Reply,
    ) -> None:
        """Hand the ops to the intake; their ids count as stored until the disk says otherwise
        (from before the hand-over: the intake may answer before `put` returns)."""

        def failed(error: IntakeError) -> None:
            reply(503, error_payload(str(error)), RETRY_AFTER)

        if event_ids:
            self.ledger.expect(event_ids)
        try:
            self.intake.put(ops, event_ids, payload, done, failed)
        except IntakeError as exc:
            self.ledger.refused(event_ids)
            failed(exc)


@dataclass(slots=True)
class SortedBatch:
    """A batch's events sorted out: the new valid ones to store, and one result per event."""

    results: list[dict[str, Any]]
    ops: list[Any] = field(default_factory=list)
    #: Each op's line; None when every op is a decoded event without an id (written together).
    lines: list[bytes] | None = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)  # each op's id, or None
    claimed: set[str] = field(default_factory=set)  # the ids among them
    duplicates: int = 0
    rejected: int = 0

    def records(self) -> bytes:
        """The spool records of the ops to store (those of the usual batch in one pass)."""
        if self.lines is None:
            return records_without_ids(lines_of(self.ops))
        return encode_records(self.ids, self.lines)


def _sort_out(outcomes: list[FastEvent | Ready | EventError], ledger: Ledger) -> SortedBatch:
    if set(map(type, outcomes)) == _DECODED_ONLY:
        # The usual batch, every event valid and none with an id: nothing to look up.
        return SortedBatch([_ACCEPTED] * len(outcomes), outcomes, None)
    lines: list[bytes] = []
    batch = SortedBatch([], lines=lines)
    for index, outcome in enumerate(outcomes):
        if type(outcome) is FastEvent:
            event_id, op, line = None, outcome, line_of(outcome)
        elif type(outcome) is Ready:
            event_id, op, line = outcome
        else:
            refusal = {"accepted": False, "index": index, "status": outcome.status}
            batch.results.append(refusal | outcome.to_json())  # type: ignore[union-attr]
            batch.rejected += 1
            continue
        if event_id is not None:
            if event_id in batch.claimed or ledger.is_duplicate(event_id):
                batch.results.append(_DUPLICATE)
                batch.duplicates += 1
                continue
            batch.claimed.add(event_id)
        batch.ops.append(op)
        lines.append(line)
        batch.ids.append(event_id)
        batch.results.append(_ACCEPTED)
    return batch


def media_type(content_type: bytes) -> bytes:
    """`application/x-ndjson` from `Application/X-NDJSON; charset=utf-8`."""
    return content_type.partition(b";")[0].strip().lower()
