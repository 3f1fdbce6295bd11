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

import io
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


#: The Python type msgspec checks each column's values against (an integer within Int64).
_VALUE_TYPES: dict[type[pl.DataType], Any] = {
    pl.String: str,
    pl.Boolean: bool,
    pl.Float64: float,
    pl.Int64: Annotated[int, INT64],
}
#: The op keys with their column types, made from OP_COLUMNS: a value of another type fails the
#: decode (msgspec takes an integer as a float, as the column does).
_TypedOp = msgspec.defstruct(
    "_TypedOp",
    [(name, _VALUE_TYPES[type(dtype)] | None, None) for name, dtype in OP_COLUMNS.items()],
    gc=False,
)

_DECODER = msgspec.json.Decoder(_TypedOp)
#: Lines are decoded this many bytes at a time.
DECODE_BYTES = 8 * 1024 * 1024


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


def history_frame(lines: Lines, *, host: str, stream: str, fallback_day: date) -> pl.DataFrame:
    """The table's rows for these lines, in HISTORY_SCHEMA (`fallback_day`: the day of ops whose
    timestamp cannot be read, the day their file was started). Decoded in pieces of about
    DECODE_BYTES, so the Python objects of a decode never hold more than a piece."""
    frames = [
        _rows(piece, host=host, stream=stream, fallback_day=fallback_day)
        for piece in _pieces(lines, DECODE_BYTES)
    ]
    return pl.concat(frames) if frames else empty_history_frame()


def _pieces(lines: Lines, size: int) -> list[Lines]:
    pieces, start, data = [], 0, lines.data
    while start < len(data):
        end = data.rfind(b"\n", start, start + size) + 1
        if end <= start:  # a line longer than `size`: whole
            end = data.index(b"\n", start) + 1
        pieces.append(Lines(data[start:end], lines.segment, lines.offset + start))
        start = end
    return pieces


def _rows(lines: Lines, *, host: str, stream: str, fallback_day: date) -> pl.DataFrame:
    texts = _line_column(lines.data)
    count = texts.height
    lengths = texts["line"].str.len_bytes().cast(pl.Int64) + 1
    line_bytes = texts["line_bytes"] if "line_bytes" in texts.columns else None
    if line_bytes is not None:  # lengths of lines that are not UTF-8: their own bytes
        lengths = line_bytes.bin.size().cast(pl.Int64).fill_null(lengths - 1) + 1
    frame = pl.DataFrame(
        {
            "host": pl.repeat(host, count, dtype=pl.String, eager=True),
            "stream": pl.repeat(stream, count, dtype=pl.String, eager=True),
            "segment": pl.repeat(lines.segment, count, dtype=pl.Int64, eager=True),
            "offset": lengths.cum_sum().shift(1, fill_value=0) + lines.offset,
            **_typed_columns(lines.data),
            "line": texts["line"],
            "line_bytes": line_bytes
            if line_bytes is not None
            else pl.Series("line_bytes", [None] * count, dtype=pl.Binary),
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


def _line_column(data: bytes) -> pl.DataFrame:
    """The lines as a `line` column; where some are not UTF-8, a `line_bytes` column too (their
    bytes; the text then has U+FFFD). Read by polars when the data is UTF-8 without a raw tab
    (always so for lines Observer wrote), else line by line."""
    try:
        data.decode()
    except UnicodeDecodeError:
        pass
    else:
        if b"\t" not in data:
            return pl.read_csv(
                io.BytesIO(data),
                has_header=False,
                separator="\t",
                quote_char=None,
                schema={"line": pl.String},
            )
    texts: list[str] = []
    kept: list[bytes | None] = []
    for line in data.split(b"\n")[:-1]:
        try:
            texts.append(line.decode())
            kept.append(None)
        except UnicodeDecodeError:
            texts.append(line.decode(errors="replace"))
            kept.append(line)
    columns: dict[str, pl.Series] = {"line": pl.Series("line", texts, dtype=pl.String)}
    if any(raw is not None for raw in kept):
        columns["line_bytes"] = pl.Series("line_bytes", kept, dtype=pl.Binary)
    return pl.DataFrame(columns)


def _typed_columns(data: bytes) -> dict[str, pl.Series]:
    """The op keys' columns: one msgspec decode of the lines, else line by line."""
    try:
        ops = _DECODER.decode_lines(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        ops = [_decode_line(line) for line in data.split(b"\n")[:-1]]
    return {
        name: pl.Series(name, [getattr(op, name) for op in ops], dtype=dtype)
        for name, dtype in OP_COLUMNS.items()
    }


def _decode_line(line: bytes) -> _TypedOp:
    """One line's typed values: each key checked on its own, a wrong type left null."""
    try:
        return _DECODER.decode(line)
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
