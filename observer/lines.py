"""Reading a growing line-oriented file the way log shippers do: bounded memory.

`read_lines` walks a file from a byte offset in fixed-size chunks and never holds more than one chunk
plus one line (at most `max_line_bytes`): a longer line is scanned to its end but only its first bytes
are kept, so a 5 MB line costs I/O, not memory. Which file it is: `observer.identity`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

CHUNK_BYTES = 1024 * 1024
KEPT_PREFIX_BYTES = 4096  # what is kept of a line longer than the limit (for the quarantine)


@dataclass(slots=True, frozen=True)
class Line:
    """One line of the file: where it starts, its bytes (a prefix if too long), and how it ends."""

    offset: int
    data: bytes  # without the newline; only the first KEPT_PREFIX_BYTES when `too_long`
    length: int  # the line's full length without the newline
    terminated: bool
    too_long: bool = False

    @property
    def end(self) -> int:
        """Offset just past the line (and its newline when it has one)."""
        return self.offset + self.length + (1 if self.terminated else 0)


def read_lines(
    handle: BinaryIO,
    start: int,
    *,
    max_line_bytes: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[Line]:
    """Lines from `start` to the end of the file; the last one is unterminated if no newline ends it.

    The caller may stop at any line; the next read starts at that line's `end`.
    """
    handle.seek(start)
    carry = b""  # the start of a line whose newline has not been read yet
    carry_offset = start
    skipping: tuple[int, bytes, int] | None = None  # too-long line: offset, prefix, length so far
    while chunk := handle.read(chunk_bytes):
        if skipping is not None:
            line_offset, prefix, length = skipping
            newline = chunk.find(b"\n")
            if newline < 0:
                skipping = (line_offset, prefix, length + len(chunk))
                continue
            yield Line(line_offset, prefix, length + newline, True, True)
            skipping = None
            carry, carry_offset = b"", line_offset + length + newline + 1
            chunk = chunk[newline + 1 :]
        data = carry + chunk if carry else chunk
        position = 0
        while (newline := data.find(b"\n", position)) >= 0:
            yield _line(carry_offset + position, data[position:newline], max_line_bytes, True)
            position = newline + 1
        carry, carry_offset = data[position:], carry_offset + position
        if len(carry) > max_line_bytes:
            skipping = (carry_offset, carry[:KEPT_PREFIX_BYTES], len(carry))
            carry = b""
    if skipping is not None:
        line_offset, prefix, length = skipping
        yield Line(line_offset, prefix, length, False, True)
    elif carry:
        yield _line(carry_offset, carry, max_line_bytes, False)


def _line(offset: int, data: bytes, max_line_bytes: int, terminated: bool) -> Line:
    if len(data) > max_line_bytes:
        return Line(offset, data[:KEPT_PREFIX_BYTES], len(data), terminated, True)
    return Line(offset, data, len(data), terminated)
