"""Is this still the file I read? One answer for every reader that resumes from a byte offset.

A `FileMark` remembers where a reader stopped and which file that was: device and inode, plus a
fingerprint of the first line (which an appending writer never changes). The corrections tailer,
the analysis watermark and the playbook state all keep one. Against the file now at the path, a
mark tells whether it is the same file grown (resume at the offset) or another one: rotated (new
inode), truncated (shorter than the offset) or rewritten in place (another first line).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Self

from pydantic import BaseModel

FINGERPRINT_BYTES = 1024


def line_fingerprint(first_line: bytes) -> tuple[str, int]:
    """Fingerprint of a file from its first line (no newline): hash of at most FINGERPRINT_BYTES,
    and how many bytes it covers. An appending writer never changes those bytes."""
    head = first_line[:FINGERPRINT_BYTES]
    return hashlib.sha256(head).hexdigest()[:16], len(head)


def head_fingerprint(handle: BinaryIO) -> tuple[str, int] | None:
    """`line_fingerprint` of the file's first line, or None while that line is still incomplete."""
    handle.seek(0)
    head = handle.read(FINGERPRINT_BYTES)
    newline = head.find(b"\n")
    if newline < 0 and len(head) < FINGERPRINT_BYTES:
        return None
    return line_fingerprint(head if newline < 0 else head[:newline])


def has_fingerprint(path: os.PathLike[str] | str, fingerprint: str, covered: int) -> bool:
    """Whether the file's first `covered` bytes hash to `fingerprint` (False if unreadable)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(covered)
    except OSError:
        return False
    return len(head) == covered and line_fingerprint(head)[0] == fingerprint


class FileMark(BaseModel):
    """A byte offset in a file, and enough of the file's identity to recognise it again."""

    dev: int | None = None
    ino: int | None = None
    fingerprint: str | None = None  # hash of the first line's first bytes, once it is complete…
    fingerprint_bytes: int = 0  # …and how many bytes it covers
    offset: int = 0

    @classmethod
    def at(cls, path: Path, offset: int) -> Self:
        """The mark of `offset` in the file now at `path`."""
        with open(path, "rb") as handle:
            return cls(offset=offset).identified(handle)

    def identified(self, handle: BinaryIO) -> Self:
        """This mark with the file's device and inode, and its fingerprint once the first line is
        complete (a fingerprint already taken is kept)."""
        stat = os.fstat(handle.fileno())
        update: dict[str, object] = {"dev": stat.st_dev, "ino": stat.st_ino}
        if self.fingerprint is None and (found := head_fingerprint(handle)) is not None:
            update["fingerprint"], update["fingerprint_bytes"] = found
        return self.model_copy(update=update)

    def change(self, path: Path, stat: os.stat_result | None = None) -> str | None:
        """Why the file at `path` is not this mark's file grown, or None if it still is.

        A mark that never saw a file (no inode yet) only checks the size. Raises FileNotFoundError
        when nothing is at `path`.
        """
        stat = stat or path.stat()
        if self.ino is not None and (stat.st_dev, stat.st_ino) != (self.dev, self.ino):
            return "rotated (new inode)"
        if stat.st_size < self.offset:
            return "truncated"
        if self.fingerprint is not None and not has_fingerprint(
            path, self.fingerprint, self.fingerprint_bytes
        ):
            return "copy-truncated (first line changed)"
        return None

    def same_file(self, other: FileMark) -> bool:
        """Whether two marks were taken on the same file (device, inode and first line)."""
        return (self.dev, self.ino, self.fingerprint) == (other.dev, other.ino, other.fingerprint)

    def still_at(self, path: Path) -> bool:
        """True if `path` holds this mark's file, grown or not (False if nothing is there)."""
        try:
            return self.change(path) is None
        except FileNotFoundError:
            return False
