"""Failures out of the ops: the lines after a persisted watermark, or a time window.

A stream position says what has been analysed: a scheduled run reads the lines after its
watermark (the hot file and the sealed segments, through `observer.history.reader`, which goes to
the history table only when the watermark is older than the files), so its cost follows the new
data, not the history. A time window (`since_hours`) reads the table's day partitions it covers
plus the files not committed yet. The watermark is a `StreamMark`: a watermark of another stream
(a wiped data dir) is not trusted, and the run starts again at the newest lines.

Lines are parsed with polars: a cheap substring test keeps failures only, then their fields are
extracted. Lines polars cannot parse (the original escaped lone UTF-16 surrogates, which polars
refuses) fall back to Python's json and are repaired; what nobody can parse is counted, not hidden.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from observer.history.reader import OpsReader
from observer.history.stream import StreamMark
from observer.pipelines.frames import lines_frame
from observer.pipelines.grouping import clean_cut, failure_text
from observer.settings import Settings

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
    """Failures read in one run, and the stream positions they came from."""

    frame: pl.DataFrame
    start: int
    end: int
    lines: int
    unreadable: int
    note: str


def start_position(
    settings: Settings, reader: OpsReader, watermark: StreamMark | None
) -> tuple[int, str]:
    """Where a since-last read starts, and why (shown in the run)."""
    position = watermark.on(settings) if watermark is not None else None
    if position is not None and position <= reader.end:
        return position, "since the last analysis"
    start = reader.tail(FIRST_RUN_LINES).start
    if watermark is None:
        return start, f"first analysis: the last {FIRST_RUN_LINES} lines"
    return (
        start,
        f"the ops were replaced (another stream): restarted at the last {FIRST_RUN_LINES} lines",
    )


def read_since(
    reader: OpsReader, start: int, note: str, max_bytes: int = MAX_READ_BYTES
) -> Failures:
    """Failures in the complete lines after position `start` (about `max_bytes` at most)."""
    frames, unreadable, lines, end = [], 0, 0, start
    for piece in reader.lines_from(start, max_bytes):
        frame, bad = extract_failures(lines_frame(piece.data).lazy())
        frames.append(frame)
        unreadable += bad
        lines += piece.data.count(b"\n")
        end = piece.end
    return Failures(_concat(frames), start, end, lines, unreadable, note)


def read_window(
    reader: OpsReader, since_hours: float, now: datetime | None = None, *, all_hosts: bool = False
) -> Failures:
    """Failures whose timestamp is within the last `since_hours`: the table's partitions of
    those days (every host's with `all_hosts`), then the files not committed yet."""
    now = now or datetime.now(UTC)
    cutoff = window_start(since_hours, now)
    since = now - timedelta(hours=since_hours)
    frames, unreadable = [], 0
    for lines in reader.window(since, failures_only=True, all_hosts=all_hosts):
        frame, bad = extract_failures(lines)
        frames.append(frame.filter(pl.col("timestamp") >= cutoff))
        unreadable += bad
    return Failures(_concat(frames), 0, reader.end, -1, unreadable, f"since {cutoff}")


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(frames) if frames else _empty_failures()


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
