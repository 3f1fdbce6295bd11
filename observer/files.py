"""Durable small files: atomic state files, fsync'd appends cut back on failure, file locks, and
bounded reads from the end or from an offset.

Every piece of state Observer keeps (checkpoints, watermarks, caches) is a small JSON file replaced
atomically (tmp + fsync + rename), so a crash leaves the old or the new content, never a mix; every
append is fsync'd before anyone is told, and cut back if it fails, so no reader sees half of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from pydantic import BaseModel

READ_CHUNK_BYTES = 1024 * 1024

Model = TypeVar("Model", bound=BaseModel)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def save_state(path: Path, state: BaseModel) -> None:
    """Persist a checkpoint/state model atomically (tmp + fsync + rename)."""
    write_atomic(path, state.model_dump_json(indent=1).encode() + b"\n")


def load_state(path: Path, model: type[Model]) -> Model:
    """Read a state model, or its defaults when the file does not exist yet."""
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return model()


def append_durably(path: Path, data: bytes) -> int:
    """Append `data` to `path` with one fsync; on failure cut the file back. Returns the new size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        write_or_cut_back(fd, start, data, sync=True)
        return start + len(data)
    finally:
        os.close(fd)


def truncate_to(path: Path, size: int) -> bool:
    """Cut `path` back to `size` bytes if it is longer (crash repair); True when it cut."""
    try:
        current = path.stat().st_size
    except FileNotFoundError:
        return False
    if current <= size:
        return False
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())
    return True


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive `flock` on `path` across processes; yields False if not blocking and busy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_or_cut_back(fd: int, start: int, data: bytes, *, sync: bool) -> None:
    """Append `data` to the file of `fd` (`start` bytes long), fsync'd if `sync`; on any OSError
    cut the file back to `start`, so no reader ever sees part of it, and re-raise."""
    try:
        _write_all(fd, data)
        if sync:
            os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_all_at(fd: int, data: bytes, offset: int) -> None:
    """Write all of `data` at `offset` (`pwrite` may write part of it)."""
    written = os.pwrite(fd, data, offset)
    if written == len(data):  # the usual case, with no view to make
        return
    view = memoryview(data)[written:]
    offset += written
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


@dataclass
class Tail:
    """The last complete lines of a file, each with the byte offset where it starts."""

    lines: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    start: int = 0
    end: int = 0
    inode: int | None = None


def read_tail(path: Path, count: int) -> Tail:
    """The last `count` complete lines of `path`, read backwards in chunks (an unterminated last
    line is not complete yet and is left for the next run)."""
    try:
        with open(path, "rb") as handle:
            return tail_of(handle, count)
    except FileNotFoundError:
        return Tail()


def tail_of(handle: BinaryIO, count: int, size: int | None = None) -> Tail:
    """`read_tail` of an open file, as if it ended at `size` (its current end by default)."""
    inode = os.fstat(handle.fileno()).st_ino
    position, data = _read_back(handle, count, size)
    complete = data.rfind(b"\n")
    if complete < 0:
        return Tail(start=position + len(data), end=position + len(data), inode=inode)
    lines = data[:complete].split(b"\n")
    offset = position
    if position > 0:  # the first piece may be the end of an earlier line
        offset += len(lines[0]) + 1
        lines = lines[1:]
    for skipped in lines[: max(0, len(lines) - count)]:
        offset += len(skipped) + 1
    lines = lines[-count:]
    offsets = []
    for line in lines:
        offsets.append(offset)
        offset += len(line) + 1
    start = offsets[0] if offsets else offset
    return Tail(lines, offsets, start, position + complete + 1, inode)


def _read_back(handle: BinaryIO, count: int, size: int | None) -> tuple[int, bytes]:
    """Chunks from the end (or `size`) until more than `count` newlines are in hand: (start
    offset, bytes)."""
    end = handle.seek(0, os.SEEK_END)
    position = end if size is None else min(size, end)
    chunks: list[bytes] = []
    newlines = 0
    while position > 0 and newlines <= count:
        step = min(READ_CHUNK_BYTES, position)
        position -= step
        handle.seek(position)
        chunk = handle.read(step)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
    return position, b"".join(reversed(chunks))


def read_from(path: Path, offset: int, limit: int, *, whole_line: bool = False) -> bytes:
    """Up to `limit` bytes of `path` from `offset` (none if it does not exist). With `whole_line`,
    a read holding no newline goes on until one (or the end): a line longer than `limit` still
    comes out whole."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(limit)
            while whole_line and data and b"\n" not in data:
                more = handle.read(READ_CHUNK_BYTES)
                if not more:
                    break
                data += more
            return data
    except FileNotFoundError:
        return b""


def count_lines(path: Path, offset: int = 0) -> int:
    """Newlines in `path` from `offset` on, read in chunks (0 if the file does not exist)."""
    lines = 0
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            while chunk := handle.read(READ_CHUNK_BYTES):
                lines += chunk.count(b"\n")
    except FileNotFoundError:
        return 0
    return lines
