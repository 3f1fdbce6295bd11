"""This host's stream of ops on disk: the hot ops.jsonl and the sealed segments behind it.

A *position* is a byte offset in the stream of every op line this host ever wrote, as if ops.jsonl
had never been sealed. A sealed segment is named by the position of its first byte (and the UTC
day it got its first op); the hot file starts where the last seal ended (`IngestCheckpoint.hot_base`).
Positions never move, so a watermark stays valid across seals, and the history table keeps each
row's place as (segment, offset).

Sealing renames ops.jsonl into `segments/` (as logrotate does, so `tail -F` readers follow it) and
then checkpoints the new base. It happens under the ingestion lock, right after a checkpoint, so
the file is exactly what the checkpoint says. A crash between the rename and the checkpoint leaves
ops.jsonl missing and a segment at the checkpoint's base: `finish_interrupted_seal` completes it.
Nothing here imports polars: the webhook reads the stream's tail at start.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, model_validator

from observer.files import Tail, fsync_dir, load_state, save_state, tail_of, truncate_to
from observer.identity import FileMark
from observer.intake.checkpoint import IngestCheckpoint
from observer.layout import DataLayout
from observer.settings import Settings

#: Committed segments are kept on disk while the newer files hold fewer lines than this: at least
#: the webhook's /stats window (observer/webhook/window.py), which is rebuilt from the files alone.
TAIL_LINES_KEPT = 2000
_SEGMENT_NAME = re.compile(r"^(\d{20})\.(\d{4}-\d{2}-\d{2})\.jsonl$")
_OPEN_ATTEMPTS = 20


def new_stream_name() -> str:
    """A name for a host's stream of ops, unique across hosts and data dirs."""
    return uuid.uuid4().hex[:16]


def utc_day(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Segment:
    """A sealed hot file: its first byte's position, the day it got its first op, its size."""

    base: int
    day: date
    path: Path
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size


def segment_path(layout: DataLayout, base: int, day: str) -> Path:
    return layout.segments_dir / f"{base:020d}.{day}.jsonl"


def sealed_segments(layout: DataLayout) -> list[Segment]:
    """The segments on disk, oldest first (other files in the folder are not ours)."""
    segments = []
    try:
        entries = list(os.scandir(layout.segments_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        if (match := _SEGMENT_NAME.match(entry.name)) is None:
            continue
        with contextlib.suppress(FileNotFoundError):  # deleted once committed, meanwhile
            size = entry.stat().st_size
            segments.append(
                Segment(int(match[1]), date.fromisoformat(match[2]), Path(entry.path), size)
            )
    return sorted(segments, key=lambda segment: segment.base)


# ── sealing (the caller holds the ingestion lock) ───────────────────────────────────────────


def seal_reason(settings: Settings, checkpoint: IngestCheckpoint, today: str) -> str | None:
    """Why ops.jsonl should be sealed now, or None: it passed OBSERVER_HOT_MAX_BYTES, or its ops
    began on another UTC day."""
    if settings.history == "off" or checkpoint.ops_bytes == 0:
        return None
    if checkpoint.ops_bytes >= settings.hot_max_bytes:
        return f"ops.jsonl holds {checkpoint.ops_bytes} bytes (OBSERVER_HOT_MAX_BYTES)"
    if checkpoint.hot_day is not None and checkpoint.hot_day != today:
        return f"the UTC day changed since its first op ({checkpoint.hot_day})"
    return None


def seal(settings: Settings, checkpoint: IngestCheckpoint, today: str) -> IngestCheckpoint:
    """Rename ops.jsonl into segments/ and checkpoint the position the next hot file starts at.

    ops.jsonl must be exactly `checkpoint.ops_bytes` long (the caller has just checkpointed or
    repaired it). Returns the new checkpoint (the same one when there was nothing to seal).
    """
    if checkpoint.ops_bytes == 0:
        return checkpoint
    layout = settings.layout
    target = segment_path(layout, checkpoint.hot_base, checkpoint.hot_day or today)
    layout.segments_dir.mkdir(parents=True, exist_ok=True)
    os.rename(layout.ops_path, target)
    fsync_dir(layout.segments_dir)
    fsync_dir(layout.observer_dir)
    return _sealed(settings, checkpoint)


def finish_interrupted_seal(settings: Settings, checkpoint: IngestCheckpoint) -> IngestCheckpoint:
    """The checkpoint after completing a seal that renamed ops.jsonl but died before its
    checkpoint (ops.jsonl missing, a segment at the hot base); else `checkpoint` as it is."""
    layout = settings.layout
    if checkpoint.ops_bytes == 0 or layout.ops_path.exists():
        return checkpoint
    renamed = next((s for s in sealed_segments(layout) if s.base == checkpoint.hot_base), None)
    if renamed is None:
        return checkpoint
    truncate_to(renamed.path, checkpoint.ops_bytes)
    return _sealed(settings, checkpoint)


def _sealed(settings: Settings, checkpoint: IngestCheckpoint) -> IngestCheckpoint:
    sealed = checkpoint.model_copy(
        update={"hot_base": checkpoint.ops_end, "ops_bytes": 0, "hot_day": None}
    )
    save_state(settings.layout.ingest_checkpoint, sealed)
    return sealed


# ── reading the files as one stream ─────────────────────────────────────────────────────────


@dataclass
class Piece:
    """One file of the stream as it was when the view was taken: it holds positions
    [base, base + size). The hot file is read through the descriptor opened then, so a seal
    meanwhile (a rename) changes nothing for this reader."""

    base: int
    size: int
    day: date
    path: Path
    fd: int | None = None  # the hot file's, held open

    @property
    def end(self) -> int:
        return self.base + self.size

    def read(self, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes from `offset` (within the piece's size). A sealed segment deleted
        since the view was taken raises FileNotFoundError: it was committed to the table."""
        limit = max(0, min(limit, self.size - offset))
        if self.fd is not None:
            return os.pread(self.fd, limit, offset)
        if self.size == 0:
            return b""
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return handle.read(limit)


@dataclass
class StreamFiles:
    """The stream's files at one moment: contiguous pieces, oldest first, ending with the hot file.

    Positions before `start` are only in the history table (committed, then deleted from disk).
    Close it (or use it as a context manager) to release the hot file's descriptor.
    """

    stream: str
    pieces: list[Piece] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.pieces[0].base if self.pieces else 0

    @property
    def end(self) -> int:
        return self.pieces[-1].end if self.pieces else 0

    def close(self) -> None:
        for piece in self.pieces:
            if piece.fd is not None:
                os.close(piece.fd)
                piece.fd = None

    def __enter__(self) -> StreamFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pieces_from(self, position: int) -> Iterator[tuple[Piece, int]]:
        """Each piece holding positions at or after `position`, with the offset to read it from."""
        for piece in self.pieces:
            if piece.end > position:
                yield piece, max(0, position - piece.base)

    def tail(self, count: int) -> Tail:
        """The last `count` complete lines, each with its stream position (newest file first,
        then older ones, as long as the files hold them)."""
        lines: list[bytes] = []
        positions: list[int] = []
        for piece in reversed(self.pieces):
            if len(lines) >= count:
                break
            tail = _piece_tail(piece, count - len(lines))
            lines[:0] = tail.lines
            positions[:0] = [piece.base + offset for offset in tail.offsets]
        start = positions[0] if positions else self.end
        return Tail(lines, positions, start, self.end)


def _piece_tail(piece: Piece, count: int) -> Tail:
    """The piece's last lines as it was when the view was taken (a segment deleted since: none,
    the table has them)."""
    if piece.fd is not None:
        with os.fdopen(os.dup(piece.fd), "rb") as handle:
            return tail_of(handle, count, piece.size)
    try:
        with open(piece.path, "rb") as handle:
            return tail_of(handle, count, piece.size)
    except FileNotFoundError:
        return Tail()


def open_stream(settings: Settings) -> StreamFiles:
    """A consistent view of the stream's files: the hot file held open, the sealed segments
    before it, with no gap and no overlap however seals and deletions interleave with it."""
    layout = settings.layout
    for _ in range(_OPEN_ATTEMPTS):
        before = load_state(layout.ingest_checkpoint, IngestCheckpoint)
        try:
            fd: int | None = os.open(layout.ops_path, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        after = load_state(layout.ingest_checkpoint, IngestCheckpoint)
        if before.hot_base == after.hot_base and before.stream == after.stream:
            return _view(layout, after, fd)
        if fd is not None:
            os.close(fd)
    raise RuntimeError("ops.jsonl kept being sealed while it was opened")


def _view(layout: DataLayout, checkpoint: IngestCheckpoint, fd: int | None) -> StreamFiles:
    """The pieces: sealed segments before the hot base, then the hot file (a segment at the hot
    base is ops.jsonl renamed by a seal not checkpointed yet, and stands for it)."""
    segments = [s for s in sealed_segments(layout) if s.base <= checkpoint.hot_base]
    pieces = [Piece(s.base, s.size, s.day, s.path) for s in _contiguous_suffix(segments)]
    hot_base = max([checkpoint.hot_base, *(piece.end for piece in pieces)])
    if fd is not None and pieces and pieces[-1].end > checkpoint.hot_base:
        os.close(fd)  # the hot file was renamed into the last segment meanwhile
        fd = None
    size = os.fstat(fd).st_size if fd is not None else 0
    hot_day = date.fromisoformat(checkpoint.hot_day or utc_day())
    pieces.append(Piece(hot_base, size, hot_day, layout.ops_path, fd))
    return StreamFiles(checkpoint.stream, pieces)


def _contiguous_suffix(segments: list[Segment]) -> list[Segment]:
    """The newest run of segments without a gap between them (a gap is a file deleted by hand;
    what is before it is read from the table, if it holds it)."""
    kept: list[Segment] = []
    for segment in reversed(segments):
        if kept and segment.end != kept[0].base:
            break
        kept.insert(0, segment)
    return kept


# ── marks: where a reader stopped ───────────────────────────────────────────────────────────


class StreamMark(BaseModel):
    """A position in a stream of ops: where a reader stopped (the analysis watermark, what a
    playbook entry covered). A mark of another stream (a wiped data dir) means nothing here.

    Marks taken before the history existed were a `FileMark` on ops.jsonl itself; they load as
    `legacy` and still count while that file was never sealed (its offsets are positions then).
    """

    stream: str = ""
    position: int = 0
    legacy: FileMark | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_file_mark(cls, value: Any) -> Any:
        if isinstance(value, dict) and "offset" in value and "stream" not in value:
            return {"position": value.get("offset", 0), "legacy": value}
        return value

    def on(self, settings: Settings, checkpoint: IngestCheckpoint | None = None) -> int | None:
        """This mark's position in the host's current stream, or None when it is another's."""
        checkpoint = checkpoint or load_state(settings.layout.ingest_checkpoint, IngestCheckpoint)
        if self.legacy is not None:
            never_sealed = checkpoint.hot_base == 0
            return (
                self.position
                if never_sealed and self.legacy.still_at(settings.layout.ops_path)
                else None
            )
        return self.position if self.stream == checkpoint.stream else None


def stream_end(settings: Settings) -> tuple[IngestCheckpoint, int]:
    """The checkpoint and the position just past the newest byte written (a stat: no file read),
    for the checks that tell a run it would find nothing new."""
    checkpoint = load_state(settings.layout.ingest_checkpoint, IngestCheckpoint)
    try:
        size = settings.layout.ops_path.stat().st_size
    except FileNotFoundError:
        size = 0
    return checkpoint, checkpoint.hot_base + max(size, checkpoint.ops_bytes)
