"""The history table's one schema, and how op lines become its rows.

Every column is defined here, once, for writing and for reading: the op's keys with their real
types, the parsed `ts` and its UTC `day` (the partition), where the line came from (`host`,
`stream`, `segment`, `offset`) and the line itself, so any day's ops.jsonl can be written again
byte for byte.

A value of another type than its column's (the original wrote `"count":"42"`, `"duration_ms":"abc"`)
is null in that column; the line keeps it. Lines are decoded with msgspec against typed fields; a
chunk where that fails is decoded line by line, each value checked on its own (never coerced).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any

import msgspec
import orjson
import polars as pl

INT64 = msgspec.Meta(ge=-(2**63), le=2**63 - 1)

#: The op keys as columns, in the op line's key order (observer/ops.py: OP_KEYS).
OP_COLUMNS: dict[str, pl.DataType] = {
    "timestamp": pl.String(),
    "endpoint": pl.String(),
    "input_summary": pl.String(),
    "success": pl.Boolean(),
    "duration_ms": pl.Float64(),
    "output_summary": pl.String(),
    "error": pl.String(),
    "source": pl.String(),
    "staffer_id": pl.String(),
    "sig_hash": pl.String(),
    "event_kind": pl.String(),
    "role": pl.String(),
    "city": pl.String(),
    "state": pl.String(),
    "count": pl.Int64(),
    "rescue_attempted": pl.Boolean(),
    "rescue_succeeded": pl.Boolean(),
    "task_class": pl.String(),
    "correction": pl.String(),
    "applied_at_turn": pl.Float64(),
}

#: Every column of the table, in order. `day` is the partition column.
HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "host": pl.String(),  # the instance that wrote the op (OBSERVER_INSTANCE, else "observer")
    "stream": pl.String(),  # the host's stream of ops (named once, when its ingestion started)
    "segment": pl.Int64(),  # stream position of the first byte of the sealed file it came from
    "offset": pl.Int64(),  # the line's byte offset in that file: its position is segment + offset
    "day": pl.Date(),  # UTC day of `ts`; the day its file was started when `ts` is unreadable
    "ts": pl.Datetime("us", "UTC"),
    **OP_COLUMNS,
    "line": pl.String(),  # the op line as stored, without its newline
    "line_bytes": pl.Binary(),  # the line's bytes when they are not UTF-8 (else null)
}
PARTITION_COLUMN = "day"

_STANDARD_TIMESTAMP = "%Y-%m-%dT%H:%M:%S%.fZ"


class _TypedOp(msgspec.Struct, gc=False):
    """The op keys with their column types: a value of another type fails the decode."""

    timestamp: str | None = None
    endpoint: str | None = None
    input_summary: str | None = None
    success: bool | None = None
    duration_ms: float | None = None
    output_summary: str | None = None
    error: str | None = None
    source: str | None = None
    staffer_id: str | None = None
    sig_hash: str | None = None
    event_kind: str | None = None
    role: str | None = None
    city: str | None = None
    state: str | None = None
    count: Annotated[int, INT64] | None = None
    rescue_attempted: bool | None = None
    rescue_succeeded: bool | None = None
    task_class: str | None = None
    correction: str | None = None
    applied_at_turn: float | None = None


_CHUNK_DECODER = msgspec.json.Decoder(list[_TypedOp])
_LINE_DECODER = msgspec.json.Decoder(_TypedOp)


@dataclass(frozen=True)
class Lines:
    """Complete op lines read from one place of a stream: `data` ends with a newline (or is
    empty) and starts at byte `offset` of the file whose first byte is at stream `segment`."""

    data: bytes
    segment: int
    offset: int

    @property
    def start(self) -> int:
        """The stream position of the first line."""
        return self.segment + self.offset

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def split(self) -> tuple[list[bytes], list[int]]:
        """The lines without their newlines, and each one's offset in its file."""
        lines = self.data.split(b"\n")[:-1] if self.data else []
        offsets = []
        offset = self.offset
        for line in lines:
            offsets.append(offset)
            offset += len(line) + 1
        return lines, offsets


def history_frame(lines: Lines, *, host: str, stream: str, fallback_day: date) -> pl.DataFrame:
    """The table's rows for these lines, in HISTORY_SCHEMA (`fallback_day`: the day of ops whose
    timestamp cannot be read, the day their file was started)."""
    raw, offsets = lines.split()
    texts, line_bytes = _texts(lines.data, raw)
    typed = _typed_columns(raw)
    frame = pl.DataFrame(
        {
            "host": pl.repeat(host, len(raw), dtype=pl.String, eager=True),
            "stream": pl.repeat(stream, len(raw), dtype=pl.String, eager=True),
            "segment": pl.repeat(lines.segment, len(raw), dtype=pl.Int64, eager=True),
            "offset": pl.Series(offsets, dtype=pl.Int64),
            **typed,
            "line": pl.Series(texts, dtype=pl.String),
            "line_bytes": pl.Series(line_bytes, dtype=pl.Binary),
        }
    )
    ts = parse_timestamps(frame["timestamp"])
    return frame.with_columns(ts=ts, day=ts.dt.date().fill_null(fallback_day)).select(
        list(HISTORY_SCHEMA)
    )


def empty_history_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=HISTORY_SCHEMA)


def parse_timestamps(timestamps: pl.Series) -> pl.Series:
    """`timestamp` as a UTC datetime: the op's own format fast, any other ISO-8601 form (an
    offset, no fraction, a date alone) as Python reads it, else null."""
    parsed = timestamps.str.to_datetime(_STANDARD_TIMESTAMP, strict=False, time_zone="UTC")
    unparsed = parsed.is_null() & timestamps.is_not_null()
    if not unparsed.any():
        return parsed.alias("ts")
    slow = [
        _iso_datetime(text) if miss else None
        for text, miss in zip(timestamps, unparsed, strict=True)
    ]
    return parsed.zip_with(~unparsed, pl.Series(slow, dtype=pl.Datetime("us", "UTC"))).alias("ts")


def _iso_datetime(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _texts(data: bytes, raw: list[bytes]) -> tuple[list[str], list[bytes | None]]:
    """Each line as text, and its bytes where they are not UTF-8 (the text then has U+FFFD)."""
    try:
        data.decode()
    except UnicodeDecodeError:
        texts, kept = [], []
        for line in raw:
            try:
                texts.append(line.decode())
                kept.append(None)
            except UnicodeDecodeError:
                texts.append(line.decode(errors="replace"))
                kept.append(line)
        return texts, kept
    return [line.decode() for line in raw], [None] * len(raw)


def _typed_columns(raw: list[bytes]) -> dict[str, pl.Series]:
    """The op keys' columns: one msgspec decode for the whole chunk, else line by line."""
    try:
        ops = _CHUNK_DECODER.decode(b"[" + b",".join(raw) + b"]")
    except (msgspec.DecodeError, msgspec.ValidationError):
        ops = [_decode_line(line) for line in raw]
    if not ops:
        return {name: pl.Series(name, [], dtype=dtype) for name, dtype in OP_COLUMNS.items()}
    columns = zip(*(msgspec.structs.astuple(op) for op in ops), strict=True)
    return {
        name: pl.Series(name, values, dtype=dtype)
        for (name, dtype), values in zip(OP_COLUMNS.items(), columns, strict=True)
    }


def _decode_line(line: bytes) -> _TypedOp:
    """One line's typed values: each key checked on its own, a wrong type left null."""
    try:
        return _LINE_DECODER.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        value = _python_json(line)
    if not isinstance(value, dict):
        return _TypedOp()
    return _TypedOp(**{name: _typed(value.get(name), OP_COLUMNS[name]) for name in OP_COLUMNS})


def _python_json(line: bytes) -> Any:
    """What Python's json reads (lone surrogates included, which orjson refuses), or None."""
    import json

    try:
        return json.loads(line.decode(errors="replace"))
    except ValueError:
        return None


def _typed(value: Any, dtype: pl.DataType) -> Any:
    if isinstance(dtype, pl.String):
        return value.encode("utf-8", "replace").decode() if isinstance(value, str) else None
    if isinstance(dtype, pl.Boolean):
        return value if isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(dtype, pl.Int64):
        return value if isinstance(value, int) and -(2**63) <= value < 2**63 else None
    try:
        return float(value)
    except OverflowError:  # an integer beyond a double
        return None
