"""The spool: an fsync'd append-only log of acknowledged ops, cut into numbered segments.

Data flows one way: producers (the webhook, the corrections tailer, `observed()`) append records to
the spool; the ingestion flow moves them, in order and exactly once, into ops.jsonl; everything else
reads ops.jsonl.

A spool record is one line: the client's `event_id` (possibly empty), a tab, the op's exact
ops.jsonl line. A JSON line never holds a raw tab, so the split is unambiguous, and ingestion copies
the op's bytes as they are. Several processes may append at once: an exclusive `flock` on
`spool/.lock` covers each append, and a failed write is cut back so no half-record is ever left.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from observer.files import fsync_dir, read_from, write_or_cut_back

SEGMENT_PATTERN = re.compile(r"^(\d{12})\.jsonl$")


class SpoolPosition(NamedTuple):
    """A place in the spool: segment number and byte offset inside it."""

    segment: int
    offset: int


class SpoolRecord(NamedTuple):
    event_id: str | None
    line: bytes  # the op's ops.jsonl line, no newline


def encode_record(event_id: str | None, op_line: bytes) -> bytes:
    return (event_id or "").encode() + b"\t" + op_line + b"\n"


def records_without_ids(op_lines: bytes) -> bytes:
    """The records of ops without ids, from their lines each ending with a newline (a JSON line
    holds no raw newline): one pass in C for a batch."""
    return b"\t" + op_lines.replace(b"\n", b"\n\t")[:-1] if op_lines else b""


def encode_records(event_ids: Sequence[str | None], op_lines: Sequence[bytes]) -> bytes:
    """The records of ops in order (`event_ids[i]` is `op_lines[i]`'s id, or None)."""
    if not any(event_ids):  # the usual batch: one join in C
        return b"\t" + b"\n\t".join(op_lines) + b"\n" if op_lines else b""
    return b"".join([encode_record(i, line) for i, line in zip(event_ids, op_lines, strict=True)])


def decode_record(raw: bytes) -> SpoolRecord:
    """One spool line (with or without its newline) back into id and op line."""
    event_id, _, line = raw.rstrip(b"\n").partition(b"\t")
    return SpoolRecord(event_id.decode() or None, line)


def segment_path(spool_dir: Path, segment: int) -> Path:
    return spool_dir / f"{segment:012d}.jsonl"


def list_segments(spool_dir: Path) -> list[int]:
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for name in names if (m := SEGMENT_PATTERN.match(name)))


class SpoolWriter:
    """Appends batches of records to the newest spool segment, safe across processes.

    `append` writes and fsyncs. The webhook uses `write` and makes the batch durable later
    (`observer.intake.syncer`), so the write and the fsync are separate steps here; whatever was written
    to a segment is fsync'd before the writer leaves it for the next one.
    """

    def __init__(self, spool_dir: Path, segment_bytes: int) -> None:
        self.spool_dir = spool_dir
        self.segment_bytes = segment_bytes
        self._lock_path = spool_dir / ".lock"
        self._segment = 0
        self._fd: int | None = None
        self._path: Path | None = None  # the open segment's
        self._lock_fd: int | None = None
        self._next_path = ""  # checked before every write: a plain string, not a Path
        self._unsynced = False  # written to the open segment since its last fsync
        spool_dir.mkdir(parents=True, exist_ok=True)

    def append(self, payload: bytes) -> tuple[SpoolPosition, SpoolPosition]:
        """Write `payload` (whole records) and fsync it; return where it starts and ends.

        On any OSError nothing of it is kept and the error propagates (the caller retries).
        """
        start, end = self.write(payload)
        try:
            self.sync()
        except OSError:
            self.cut_back(start, end)
            raise
        return start, end

    def write(self, payload: bytes) -> tuple[SpoolPosition, SpoolPosition]:
        """Write `payload` (whole records) without fsync; return where it starts and ends.

        On any OSError the segment is cut back to where it was, so readers never see a torn record,
        and the error propagates (the webhook answers 503).
        """
        with self._locked():
            fd = self._current_fd()
            start = os.fstat(fd).st_size
            if start >= self.segment_bytes:
                fd = self._open_segment(self._segment + 1, create=True)
                start = 0
            try:
                write_or_cut_back(fd, start, payload, sync=False)
            except OSError:
                self.close()  # look for the newest segment afresh next time
                raise
            self._unsynced = True
            return (
                SpoolPosition(self._segment, start),
                SpoolPosition(self._segment, start + len(payload)),
            )

    def sync(self) -> None:
        """fsync what was written to the open segment (earlier segments were synced on leaving)."""
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False

    def cut_back(self, start: SpoolPosition, end: SpoolPosition) -> bool:
        """Remove records written from `start` that never became durable, if `end` is still the
        segment's end (no other writer appended after them); True when they are gone."""
        with self._locked():
            if self._fd is None or not self._segment == start.segment == end.segment:
                return False
            try:
                if os.fstat(self._fd).st_size != end.offset:
                    return False
                os.ftruncate(self._fd, start.offset)
            except OSError:
                return False
            return True

    def segment_file(self, position: SpoolPosition) -> Path:
        if position.segment == self._segment and self._path is not None:
            return self._path  # the open segment's: asked for after every write
        return segment_path(self.spool_dir, position.segment)

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = None
                self._unsynced = False

    def shutdown(self) -> None:
        self.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fd is None:  # kept open: the webhook writes thousands of times a second
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _current_fd(self) -> int:
        # Called under the spool lock. Another writer may have started newer segments: follow them.
        if self._fd is None:
            segments = list_segments(self.spool_dir)
            return self._open_segment(segments[-1] if segments else 1, create=True)
        while os.path.exists(self._next_path):
            self._open_segment(self._segment + 1, create=False)
        return self._fd

    def _open_segment(self, segment: int, *, create: bool) -> int:
        path = segment_path(self.spool_dir, segment)
        existed = path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)
        if not existed:
            fsync_dir(self.spool_dir)
        try:
            self.close()  # fsyncs what this writer left unsynced in the segment it leaves
        except OSError:
            os.close(fd)
            raise
        self._fd, self._segment, self._path = fd, segment, path
        self._next_path = str(segment_path(self.spool_dir, segment + 1))
        return fd


@dataclass
class SpoolChunk:
    """Complete records read from the spool, and where the next read starts."""

    data: bytes
    end: SpoolPosition
    torn_bytes: int = 0  # bytes of an unterminated record at the end of an abandoned segment

    @property
    def records(self) -> Iterator[SpoolRecord]:
        for raw in self.data.splitlines():
            if raw:
                yield decode_record(raw)


def read_spool(
    spool_dir: Path,
    start: SpoolPosition,
    *,
    max_bytes: int = 64 * 1024 * 1024,
    until: SpoolPosition | None = None,
) -> SpoolChunk:
    """Read complete records from `start`, across segments, up to `max_bytes` (or `until`).

    A newer segment existing means no writer appends to older ones any more, so the check for it
    comes before reading a segment to its end. A segment that starts after `start.segment` was
    never seen before and is read from byte 0.
    """
    parts: list[bytes] = []
    size = 0
    position = start
    torn = 0
    segments = [s for s in list_segments(spool_dir) if s >= start.segment]
    if segments and segments[0] > position.segment:
        position = SpoolPosition(segments[0], 0)
    while size < max_bytes:
        if until is not None and position >= until:
            break
        newer_exists = segment_path(spool_dir, position.segment + 1).exists()
        limit = max_bytes - size
        if until is not None and until.segment == position.segment:
            limit = min(limit, until.offset - position.offset)
        path = segment_path(spool_dir, position.segment)
        # One record longer than the budget is read whole rather than never progress.
        data = read_from(path, position.offset, limit, whole_line=size == 0 and until is None)
        cut = data.rfind(b"\n") + 1
        parts.append(data[:cut])
        size += cut
        position = SpoolPosition(position.segment, position.offset + cut)
        reached_end = len(data) < limit
        if not (newer_exists and reached_end):
            break
        torn += len(data) - cut  # a record that will never be finished: skipped, and counted
        position = SpoolPosition(position.segment + 1, 0)
    return SpoolChunk(b"".join(parts), position, torn)


def delete_segments_before(spool_dir: Path, segment: int) -> int:
    """Remove spool segments older than `segment` (all of them already ingested)."""
    removed = 0
    for old in list_segments(spool_dir):
        if old >= segment:
            break
        with contextlib.suppress(FileNotFoundError):
            segment_path(spool_dir, old).unlink()
            removed += 1
    return removed
