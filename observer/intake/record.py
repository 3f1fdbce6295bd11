"""`record_ops()`: the synchronous door onto the spool, for flows and library callers.

The corrections tailer and `observed()` write their ops here: one append and one fsync per call,
safe beside the webhook and other writers (the spool's file lock). Light on purpose: `observed()`
imports it on an agent's start-up path.
"""

from __future__ import annotations

from collections.abc import Iterable

from observer.intake.spool import SpoolWriter, encode_record
from observer.ops import Op
from observer.settings import Settings


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
    writer = SpoolWriter(settings.layout.spool_dir, settings.spool_segment_bytes)
    try:
        writer.append(payload)
    finally:
        writer.shutdown()
    return payload.count(b"\n")
