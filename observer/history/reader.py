"""Hot + history as one: the one place every reader of ops gets them from.

An `OpsReader` is one consistent view of this host's stream of ops: its files on disk (the hot
ops.jsonl and the sealed segments, `observer.history.stream`) taken first, then, only if a read
needs it, the history table (`observer.history.table`). Segments are deleted only once committed,
so whatever left the disk before the files were listed is in any table version opened after:
positions below the *boundary* are read from the table, the rest from the files, with no gap and
no duplicate. A scheduled run that resumes from its watermark reads the files alone (the table is
never opened), so it costs what is new; a time window reads only the table's day partitions it
covers, plus the files not committed yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from typing import TYPE_CHECKING

import polars as pl

from observer.files import Tail
from observer.history.schema import HISTORY_SCHEMA, Lines, history_frame
from observer.history.stream import StreamFiles, open_stream, utc_day
from observer.history.table import HistoryTable
from observer.settings import Settings

if TYPE_CHECKING:
    from deltalake import DeltaTable

#: Lines are read from the files in pieces of about this size, so memory follows a piece.
READ_CHUNK_BYTES = 64 * 1024 * 1024
#: The export sorts about this many table rows at a time.
EXPORT_ROWS = 500_000


def position() -> pl.Expr:
    """A table row's stream position."""
    return (pl.col("segment") + pl.col("offset")).alias("pos")


class OpsReader:
    """Every op of this host's stream (and, from the table, of every host) as of one moment.

    Use it as a context manager: it holds the hot file open while it lives.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.files: StreamFiles = open_stream(settings)
        self._history = HistoryTable(settings)
        self._table: DeltaTable | None = None
        self._opened = False

    def __enter__(self) -> OpsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.files.close()

    @property
    def stream(self) -> str:
        return self.files.stream

    @property
    def end(self) -> int:
        """The position just past the newest op this view holds."""
        return self.files.end

    @property
    def table(self) -> DeltaTable | None:
        """The table's version opened after the files were listed (None: no table yet)."""
        if not self._opened:
            self._table = self._history.open()
            self._opened = True
        return self._table

    @property
    def boundary(self) -> int:
        """Positions below this are read from the table, the others from the files."""
        if self.table is None:
            return self.files.start
        committed = self._history.committed_end(self.table, self.stream)
        return max(self.files.start, min(committed, self.files.end))

    # ── in arrival order, from a position ───────────────────────────────────────────────────

    def lines_from(self, start: int, max_bytes: int | None = None) -> Iterator[Lines]:
        """Complete lines from position `start` on, in order, in pieces of at most about
        READ_CHUNK_BYTES; at most about `max_bytes` in all (a longer line comes out whole)."""
        budget = max_bytes if max_bytes is not None else float("inf")
        if start < self.files.start and self.table is not None:
            for lines in self._table_lines(start, self.boundary):
                yield lines
                budget -= len(lines.data)
                if budget <= 0:
                    return
            start = max(start, self.boundary)
        for piece, offset in self.files.pieces_from(start):
            while offset < piece.size and budget > 0:
                data = _whole_lines(piece.read(offset, int(min(READ_CHUNK_BYTES, budget))))
                if not data:
                    if offset + READ_CHUNK_BYTES >= piece.size:
                        break  # the piece ends in an unterminated line: not complete yet
                    data = _whole_lines(piece.read(offset, piece.size - offset))
                    if not data:
                        break
                yield Lines(data, piece.base, offset)
                offset += len(data)
                budget -= len(data)

    def _table_lines(self, start: int, end: int) -> Iterator[Lines]:
        """This stream's lines in [start, end) from the table, one piece per segment."""
        assert self.table is not None
        rows = (
            self._history.scan(self.table)
            .filter(pl.col("stream") == self.stream, position() >= start, position() < end)
            .select("segment", "offset", "line", "line_bytes")
            .sort("segment", "offset")
            .collect()
        )
        yield from _rows_as_lines(rows)

    # ── by time ─────────────────────────────────────────────────────────────────────────────

    def window(
        self, since: datetime, *, failures_only: bool = False, all_hosts: bool = False
    ) -> Iterator[pl.LazyFrame]:
        """Frames of raw lines (`line`) holding every op of day `since` or later: the table's
        partitions from that day (other hosts' too, with `all_hosts`), then the files not
        committed yet. The caller filters by the exact time; `failures_only` lets the table
        skip successes."""
        boundary = self.boundary
        if self.table is not None:
            own = (pl.col("stream") == self.stream) & (position() < boundary)
            if all_hosts:
                own = own | (pl.col("stream") != self.stream)
            rows = self._history.scan(self.table).filter(pl.col("day") >= since.date(), own)
            if failures_only:
                rows = rows.filter(pl.col("success").not_())
            yield rows.select("line")
        for lines in self.lines_from(boundary):
            yield _lines_frame(lines).lazy()

    def ops_between(
        self, start: datetime, end: datetime | None = None, *, columns: list[str] | None = None
    ) -> pl.DataFrame:
        """This stream's ops with `ts` in [start, end), typed as the table's schema plus `pos`,
        in arrival order (ops whose timestamp is unreadable are left out)."""
        wanted = ["pos", "ts", *(columns or [])]
        in_range = pl.col("ts") >= start
        if end is not None:
            in_range = in_range & (pl.col("ts") < end)
        frames = []
        boundary = self.boundary
        if self.table is not None:
            days = pl.col("day") >= start.date()
            if end is not None:
                days = days & (pl.col("day") <= end.date())
            frames.append(
                self._history.scan(self.table)
                .filter(days, pl.col("stream") == self.stream, position() < boundary)
                .with_columns(position())
                .filter(in_range)
                .select(wanted)
                .collect()
            )
        for lines in self.lines_from(boundary):
            frames.append(
                self.typed(lines).with_columns(position()).filter(in_range).select(wanted)
            )
        if not frames:
            return pl.DataFrame(schema={"pos": pl.Int64, "ts": pl.Datetime("us", "UTC")})
        return pl.concat(frames).sort("pos")

    def ops_from(
        self, start: int, *, columns: list[str] | None = None, max_bytes: int | None = None
    ) -> tuple[pl.DataFrame, int]:
        """This stream's ops after position `start`, typed as the table's schema plus `pos`, in
        arrival order, and the position read up to (about `max_bytes` of lines at most): what a
        run that follows the stream reads each time."""
        wanted = ["pos", *(columns if columns is not None else HISTORY_SCHEMA)]
        frames, end = [], start
        if start < self.files.start and self.table is not None:
            boundary = self.boundary
            rows = (
                self._history.scan(self.table)
                .filter(pl.col("stream") == self.stream, position() >= start)
                .filter(position() < boundary)
                .with_columns(position())
                .select(wanted)
                .sort("pos")
                .collect()
            )
            frames.append(rows)
            start = end = max(start, boundary)
        for lines in self.lines_from(start, max_bytes):
            frames.append(self.typed(lines).with_columns(position()).select(wanted))
            end = lines.end
        if not frames:
            return pl.DataFrame(schema={"pos": pl.Int64} | _schema_of(wanted[1:])), end
        return pl.concat(frames), end

    def typed(self, lines: Lines) -> pl.DataFrame:
        """Lines from the files as table rows (the table's own rows are typed already)."""
        day = next(
            (piece.day for piece in self.files.pieces if piece.base == lines.segment),
            date.fromisoformat(utc_day()),
        )
        return history_frame(
            lines, host=self.settings.instance_name, stream=self.stream, fallback_day=day
        )

    # ── the newest ops ──────────────────────────────────────────────────────────────────────

    def tail(self, count: int) -> Tail:
        """The newest `count` complete lines of the stream, each with its position (the files
        first; the table for what they no longer hold)."""
        tail = self.files.tail(count)
        missing = count - len(tail.lines)
        if missing <= 0 or self.table is None:
            return tail
        below = tail.offsets[0] if tail.offsets else self.files.start
        older = self._table_tail(missing, below)
        lines = [_line_bytes(row) for row in older.iter_rows(named=True)] + tail.lines
        positions = older["pos"].to_list() + tail.offsets
        return Tail(lines, positions, positions[0] if positions else tail.end, tail.end)

    def _table_tail(self, count: int, below: int) -> pl.DataFrame:
        """The stream's `count` newest rows before position `below`, oldest first, reading only
        the files whose `segment` statistics can hold them (the newest first, then more)."""
        assert self.table is not None
        actions = pl.DataFrame(self.table.get_add_actions(flatten=True))
        if actions.height == 0:
            return pl.DataFrame(schema={"pos": pl.Int64, "line": pl.String})
        by_newest = actions.sort("max.segment", descending=True)
        needed = count
        while True:
            enough = by_newest.filter(
                pl.col("num_records").cum_sum() - pl.col("num_records") < needed
            )
            floor = enough["min.segment"].min()
            rows = (
                self._history.scan(self.table)
                .filter(
                    pl.col("segment") >= floor,
                    pl.col("stream") == self.stream,
                    position() < below,
                )
                .with_columns(position())
                .sort("pos")
                .tail(count)
                .select("pos", "line", "line_bytes")
                .collect()
            )
            if rows.height >= count or enough.height == by_newest.height:
                return rows
            needed *= 2

    # ── everything, byte for byte ───────────────────────────────────────────────────────────

    def export(self, day: date | None = None) -> Iterator[bytes]:
        """Every op line of this stream in arrival order, with its newline, as ops.jsonl would
        hold them had it never been sealed (the days retention dropped aside); with `day`, only
        the ops of that UTC day."""
        boundary = self.boundary
        if self.table is not None:
            rows = self._history.scan(self.table).filter(
                pl.col("stream") == self.stream, position() < boundary
            )
            if day is not None:
                rows = rows.filter(pl.col("day") == day)
            for low, high in _segment_ranges(rows):
                piece = (
                    rows.filter(pl.col("segment").is_between(low, high))
                    .select("segment", "offset", "line", "line_bytes")
                    .sort("segment", "offset")
                    .collect()
                )
                for lines in _rows_as_lines(piece):
                    yield lines.data
        for lines in self.lines_from(boundary):
            if day is None:
                yield lines.data
                continue
            typed = self.typed(lines).filter(pl.col("day") == day)
            yield b"".join(_line_bytes(row) + b"\n" for row in typed.iter_rows(named=True))


def _segment_ranges(rows: pl.LazyFrame) -> Iterator[tuple[int, int]]:
    """Ranges of segments holding about EXPORT_ROWS rows each, oldest first: the export reads
    one range at a time, so its memory follows a range, not the table."""
    counts = rows.group_by("segment").len().sort("segment").collect()
    low, held = None, 0
    for segment, count in counts.iter_rows():
        low = segment if low is None else low
        held += count
        if held >= EXPORT_ROWS:
            yield low, segment
            low, held = None, 0
    if low is not None:
        yield low, counts["segment"][-1]


def _schema_of(columns: list[str]) -> dict[str, pl.DataType]:
    return {name: HISTORY_SCHEMA[name] for name in columns}


def _whole_lines(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


def _line_bytes(row: dict[str, object]) -> bytes:
    raw = row.get("line_bytes")
    if isinstance(raw, bytes):
        return raw
    line = row["line"]
    assert isinstance(line, str)
    return line.encode()


def _rows_as_lines(rows: pl.DataFrame) -> Iterator[Lines]:
    """Table rows (sorted by position) as `Lines`, one per run of adjacent lines (a day that
    retention dropped leaves a gap inside a segment)."""
    length = pl.coalesce(pl.col("line_bytes").bin.size(), pl.col("line").str.len_bytes())
    adjacent = (pl.col("segment") == pl.col("segment").shift()) & (
        pl.col("offset") == (pl.col("offset") + length + 1).shift()
    )
    runs = rows.with_columns(run=adjacent.fill_null(False).not_().cum_sum())
    for _, run in runs.group_by("run", maintain_order=True):
        data = b"".join(_line_bytes(row) + b"\n" for row in run.iter_rows(named=True))
        yield Lines(data, int(run["segment"][0]), int(run["offset"][0]))


def _lines_frame(lines: Lines) -> pl.DataFrame:
    from observer.pipelines.frames import lines_frame

    return lines_frame(lines.data)
