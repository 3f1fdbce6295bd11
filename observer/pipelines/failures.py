"""Failures out of ops.jsonl: the bytes after a persisted watermark, or a time window.

ops.jsonl only grows, so a byte offset says what has been analysed: a scheduled run reads the bytes
after it, and its cost follows the new data, not the file. The watermark is a `FileMark` (inode and
first-line fingerprint besides the offset), so a replaced, rotated or truncated file is noticed and
read afresh instead of from a stale offset in the middle of a line.

Lines are parsed with polars: a cheap substring test keeps failures only, then their fields are
extracted. Lines polars cannot parse (the original escaped lone UTF-16 surrogates, which polars
refuses) fall back to Python's json and are repaired; what nobody can parse is counted, not hidden.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from observer.files import read_from, read_tail
from observer.identity import FileMark
from observer.pipelines.frames import lines_frame, scan_lines
from observer.pipelines.grouping import clean_cut, failure_text

#: With no watermark yet, start this many lines before the end (the original's ring held 2000 ops).
FIRST_RUN_LINES = 2000
#: At most this much new data per run; what is left waits for the next run.
MAX_READ_BYTES = 64 * 1024 * 1024
#: The fields a failure keeps; `error_text` is `error`, else `output_summary`, else "failed".
FIELDS = ("timestamp", "endpoint", "input_summary", "error", "output_summary", "source", "success")
FAILURE_SCHEMA = {
    "timestamp": pl.String,
    "endpoint": pl.String,
    "input_summary": pl.String,
    "source": pl.String,
    "error_text": pl.String,
}
_FAILURE_HINT = r'"success"\s*:\s*false'


@dataclass
class Failures:
    """Failures read in one run, and the byte range they came from."""

    frame: pl.DataFrame
    start: int
    end: int
    lines: int
    unreadable: int
    note: str


def start_offset(path: Path, watermark: FileMark | None) -> tuple[int, str]:
    """Where a since-last read starts, and why (shown in the run)."""
    if watermark is not None and watermark.still_at(path):
        return watermark.offset, "since the last analysis"
    start = read_tail(path, FIRST_RUN_LINES).start
    if watermark is None:
        return start, f"first analysis: the last {FIRST_RUN_LINES} lines"
    return (
        start,
        f"ops.jsonl was replaced or truncated: restarted at its last {FIRST_RUN_LINES} lines",
    )


def read_complete_lines(path: Path, start: int, max_bytes: int = MAX_READ_BYTES) -> bytes:
    """Whole lines from `start`, at most about `max_bytes` (a longer single line is read whole)."""
    data = read_from(path, start, max_bytes, whole_line=True)
    return data[: data.rfind(b"\n") + 1]


def read_since(path: Path, start: int, note: str, max_bytes: int = MAX_READ_BYTES) -> Failures:
    """Failures in the complete lines appended after `start`."""
    data = read_complete_lines(path, start, max_bytes)
    lines = lines_frame(data).lazy()
    frame, unreadable = extract_failures(lines)
    return Failures(frame, start, start + len(data), data.count(b"\n"), unreadable, note)


def read_window(path: Path, since_hours: float, now: datetime | None = None) -> Failures:
    """Failures whose timestamp is within the last `since_hours` (scans the whole file lazily)."""
    cutoff = window_start(since_hours, now)
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return Failures(_empty_failures(), 0, 0, 0, 0, f"since {cutoff}")
    frame, unreadable = extract_failures(scan_lines(path))
    frame = frame.filter(pl.col("timestamp") >= cutoff)
    return Failures(frame, 0, size, -1, unreadable, f"since {cutoff}")


def window_start(since_hours: float, now: datetime | None = None) -> str:
    """The window's start in the op timestamp format (ISO-8601 UTC, milliseconds, Z)."""
    start = (now or datetime.now(UTC)) - timedelta(hours=since_hours)
    return start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 1000:03d}Z"


def filter_failures(frame: pl.DataFrame, endpoint: str | None, source: str | None) -> pl.DataFrame:
    """Keep one endpoint's and/or one source's failures (a missing source counts as "mcp")."""
    if endpoint is not None:
        frame = frame.filter(pl.col("endpoint") == endpoint)
    if source is not None:
        frame = frame.filter(pl.col("source").fill_null("mcp") == source)
    return frame


def extract_failures(lines: pl.LazyFrame) -> tuple[pl.DataFrame, int]:
    """Failures among raw op lines, as FAILURE_SCHEMA, and how many candidate lines were unreadable."""
    candidates = (
        lines.filter(pl.col("line").str.contains(_FAILURE_HINT))
        .select(
            pl.col("line"),
            *(pl.col("line").str.json_path_match(f"$.{key}").alias(key) for key in FIELDS),
        )
        .collect()
    )
    parsed = candidates.filter(pl.col("success").is_not_null())
    rescued = [
        _parse_in_python(line) for line in candidates.filter(pl.col("success").is_null())["line"]
    ]
    rows = [row for row in rescued if row is not None]
    frame = pl.concat(
        [parsed.drop("line"), pl.DataFrame(rows, schema=dict.fromkeys(FIELDS, pl.String))]
    )
    failures = frame.filter(pl.col("success") == "false").select(
        pl.col("timestamp"),
        pl.col("endpoint").fill_null("?"),
        pl.col("input_summary"),
        pl.col("source"),
        failure_text().alias("error_text"),
    )
    return failures, len(rescued) - len(rows)


def _parse_in_python(line: str) -> dict[str, str | None] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {key: _as_text(value.get(key)) for key in FIELDS}


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return clean_cut(text, len(text))


def _empty_failures() -> pl.DataFrame:
    return pl.DataFrame(schema=FAILURE_SCHEMA)
