"""The spool: a durable append-only log of acknowledged ops, cut into numbered segments.

Data flows one way: producers (the webhook, the corrections tailer, `observed()`) append records to
the spool; the ingestion flow moves them, in order and exactly once, into ops.jsonl; everything else
reads ops.jsonl.

A spool record is one line: the client's `event_id` (possibly empty), a tab, the op's exact
ops.jsonl line. A JSON line never holds a raw tab, so the split is unambiguous, and ingestion copies
the op's bytes as they are. Several processes may append at once: an exclusive `flock` on
`spool/.lock` covers each append, and a failed write is zeroed back so no half-record is ever left.

Segments are preallocated `PREALLOCATE_BYTES` at a time, and their records end at the first NUL
byte (a record never holds one): a write into space already allocated leaves the file's size alone,
so making it durable is an `fdatasync` that flushes the data alone, without the journal commit an
append's new size needs (on this project's ext4 disk about 120 µs against 180 µs). Within one boot
a segment is records, then zeros. After a crash of the machine a lost block can leave zeros between
records that were never made durable, so the first writer of each boot (the boot id is kept in the
lock file) starts a new segment, and readers stop at the first NUL of an older one.
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

from observer.files import fsync_dir, read_from, write_all_at

SEGMENT_PATTERN = re.compile(r"^(\d{12})\.jsonl$")
#: How much of a segment is allocated ahead of its records.
PREALLOCATE_BYTES = 4 * 1024 * 1024


def _boot_id() -> bytes:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_bytes().strip()
    except OSError:
        return b"unknown"


BOOT_ID = _boot_id()


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


def data_end(fd: int, start: int = 0) -> int:
    """Where a segment's records end: its first NUL byte at or after `start` (a known end), or its
    size. Within one boot a segment is records, then zeros, so a binary search finds it."""
    low, high = start, os.fstat(fd).st_size
    while low < high:
        middle = (low + high) // 2
        if os.pread(fd, 1, middle) in (b"\0", b""):
            high = middle
        else:
            low = middle + 1
    return low


def segment_end(path: Path, start: int = 0) -> int:
    """`data_end` of the segment at `path` (0 when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        return data_end(fd, start)
    finally:
        os.close(fd)


def segment_records(path: Path) -> bytes:
    """A segment's records, without the allocated space after them."""
    data = path.read_bytes()
    end = data.find(b"\0")
    return data if end < 0 else data[:end]


class SpoolWriter:
    """Writes batches of records at the end of the newest spool segment, safe across processes.

    `append` writes and makes durable. The webhook uses `write` and makes the batch durable later
    (`observer.intake.syncer`), so the write and the fsync are separate steps here; whatever was
    written to a segment is made durable before the writer leaves it for the next one.
    """

    def __init__(self, spool_dir: Path, segment_bytes: int) -> None:
        self.spool_dir = spool_dir
        self.segment_bytes = segment_bytes
        self._lock_path = spool_dir / ".lock"
        self._segment = 0
        self._fd: int | None = None
        self._path: Path | None = None  # the open segment's
        self._end = 0  # where its records end, as last seen under the lock
        self._allocated = 0  # its size, as last seen
        self._lock_fd: int | None = None
        self._next_path = ""  # checked before every write: a plain string, not a Path
        self._unsynced = False  # written to the open segment since it was last made durable
        spool_dir.mkdir(parents=True, exist_ok=True)

    def append(self, payload: bytes) -> tuple[SpoolPosition, SpoolPosition]:
        """Write `payload` (whole records) and make it durable; return where it starts and ends.

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
        """Write `payload` (whole records) without making it durable; return where it starts and
        ends.

        On any OSError what was written of it is zeroed back, so readers never see a torn record,
        and the error propagates (the webhook answers 503).
        """
        self._lock()
        try:
            fd = self._current_fd()
            start = self._current_end(fd)
            if start >= self.segment_bytes:
                fd = self._open_segment(self._segment + 1, create=True)
                start = 0
            end = start + len(payload)
            try:
                if end > self._allocated:
                    self._preallocate(fd, start, len(payload))
                write_all_at(fd, payload, start)
            except OSError:
                _zero(fd, start, len(payload))
                self.close()  # look for the newest segment afresh next time
                raise
            self._end = end
            self._unsynced = True
            return SpoolPosition(self._segment, start), SpoolPosition(self._segment, end)
        finally:
            self._unlock()

    def sync(self) -> None:
        """Make what was written to the open segment durable (earlier segments were on leaving)."""
        if self._fd is not None and self._unsynced:
            os.fdatasync(self._fd)
            self._unsynced = False

    def cut_back(self, start: SpoolPosition, end: SpoolPosition) -> bool:
        """Remove records written from `start` that never became durable, if `end` is still where
        the segment's records end (no other writer appended after them); True when they are gone."""
        self._lock()
        try:
            if self._fd is None or not self._segment == start.segment == end.segment:
                return False
            try:
                if self._current_end(self._fd) != end.offset:
                    return False
                write_all_at(self._fd, bytes(end.offset - start.offset), start.offset)
            except OSError:
                return False
            self._end = start.offset
            return True
        finally:
            self._unlock()

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

    # Locking is two plain calls, not a context manager: the webhook writes thousands of times a
    # second, and at one connection every write is its own batch.
    def _lock(self) -> None:
        if self._lock_fd is None:  # kept open
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _current_fd(self) -> int:
        # Called under the spool lock. Another writer may have started newer segments: follow them.
        if self._fd is None:
            segments = list_segments(self.spool_dir)
            if segments and self._same_boot():
                return self._open_segment(segments[-1], create=True)
            fd = self._open_segment(segments[-1] + 1 if segments else 1, create=True)
            self._note_boot()
            return fd
        while os.access(self._next_path, os.F_OK):  # (no exception when absent, the usual case)
            self._open_segment(self._segment + 1, create=False)
        return self._fd

    def _current_end(self, fd: int) -> int:
        """Where the open segment's records end now: where this writer left them, unless another
        writer appended since (one byte read)."""
        if os.pread(fd, 1, self._end) not in (b"\0", b""):
            self._end = data_end(fd, self._end)
        return self._end

    def _preallocate(self, fd: int, start: int, length: int) -> None:
        """Allocate the segment ahead of its records (not beyond its size). Where the filesystem
        cannot, the write extends the file as an append does."""
        ahead = min(PREALLOCATE_BYTES, self.segment_bytes - start)
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, start, max(length, ahead))
        self._allocated = os.fstat(fd).st_size

    def _same_boot(self) -> bool:
        """Whether the newest segment was written since the machine last started (the lock file
        holds the boot id of the writer that started it)."""
        assert self._lock_fd is not None
        return os.pread(self._lock_fd, 64, 0) == BOOT_ID

    def _note_boot(self) -> None:
        # Not made durable on purpose: lost in a crash, it differs from the next boot's id anyway.
        assert self._lock_fd is not None
        os.pwrite(self._lock_fd, BOOT_ID, 0)
        os.ftruncate(self._lock_fd, len(BOOT_ID))

    def _open_segment(self, segment: int, *, create: bool) -> int:
        path = segment_path(self.spool_dir, segment)
        existed = path.exists()
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        try:
            if not existed:
                fsync_dir(self.spool_dir)
            self.close()  # makes durable what this writer left in the segment it leaves
            end = data_end(fd) if existed else 0
            allocated = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        self._fd, self._segment, self._path = fd, segment, path
        self._end, self._allocated = end, allocated
        self._next_path = str(segment_path(self.spool_dir, segment + 1))
        return fd


def _zero(fd: int, start: int, length: int) -> None:
    """Zero what a failed write may have left (best effort: the disk just refused a write)."""
    with contextlib.suppress(OSError):
        write_all_at(fd, bytes(length), start)


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
        # Read as far as the records go (a binary search), not into the allocated space: the
        # records then come out without a copy. A write still under way can show zeros: the
        # first one ends what is taken. One record longer than the budget is read whole rather
        # than never progress.
        available = max(0, segment_end(path, position.offset) - position.offset)
        data = read_from(
            path, position.offset, min(limit, available), whole_line=size == 0 and until is None
        )
        end = data.find(b"\0")
        if end < 0:
            end = len(data)
        cut = data.rfind(b"\n", 0, end) + 1
        parts.append(data[:cut])
        size += cut
        position = SpoolPosition(position.segment, position.offset + cut)
        if not (newer_exists and available <= limit):
            break
        torn += end - cut  # a record that will never be finished: skipped, and counted
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
