"""The one polars reader of Observer's line files: spool records and ops.jsonl lines.

Both are read as tab-separated text with quoting off: a JSON line never holds a raw tab, so an ops
line is one column and a spool record (`event_id`, tab, line) two, each kept byte for byte. Bytes
that are not UTF-8 (only a hand-edited ops.jsonl can hold them) are replaced rather than fatal.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

LINE_SCHEMA = {"line": pl.String}
SPOOL_SCHEMA = {"event_id": pl.String, "line": pl.String}


def _options(schema: dict[str, type[pl.DataType]]) -> dict[str, object]:
    return {
        "has_header": False,
        "separator": "\t",
        "quote_char": None,
        "schema": schema,
        "encoding": "utf8-lossy",
    }


def lines_frame(data: bytes) -> pl.DataFrame:
    """Complete ops.jsonl lines as a one-column frame (`line`)."""
    if not data:
        return pl.DataFrame(schema=LINE_SCHEMA)
    return pl.read_csv(io.BytesIO(data), **_options(LINE_SCHEMA))


def scan_lines(path: Path) -> pl.LazyFrame:
    """A whole ops.jsonl as a lazy one-column frame (`line`), read as the query needs it."""
    return pl.scan_csv(path, **_options(LINE_SCHEMA))


def spool_frame(data: bytes) -> pl.DataFrame:
    """Spool records as a frame of (`event_id`, `line`); an empty id becomes null (polars 1.x
    reads an empty field as null)."""
    if not data:
        return pl.DataFrame(schema=SPOOL_SCHEMA)
    return pl.read_csv(io.BytesIO(data), **_options(SPOOL_SCHEMA))


def frame_lines(frame: pl.DataFrame, column: str) -> bytes:
    """One column written back as raw lines, exactly as stored (no quoting, no header)."""
    buffer = io.BytesIO()
    frame.select(column).write_csv(buffer, include_header=False, quote_style="never")
    return buffer.getvalue()
