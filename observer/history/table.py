"""The history table: every op of every host, a Delta Lake table partitioned by UTC day.

Delta gives what a shared history needs: atomic commits over Parquet files (a reader sees one
version while writers append), appends from many hosts that commute, and application
transactions, so a retried commit is recognised. Each host stream commits under its own
application id (`observer:{host}:{stream}`) whose transaction version is the stream position
its commits have reached: `committed_end` reads it back, and a commit is made against the version
it was checked on, so a racing commit of the same stream is refused instead of doubled.

The table is local (`data/_observer/history/ops` by default, any path) or on S3-compatible object
storage (`s3://bucket/prefix`, configured by the standard `AWS_*` variables: `AWS_REGION`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for MinIO or R2,
`AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint, `AWS_CONDITIONAL_PUT=etag` where the store needs
it). `deltalake` is imported here only, inside functions: its first write starts threads, which the
warm worker template (which forks every run) must never have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from observer.history.schema import HISTORY_SCHEMA, PARTITION_COLUMN
from observer.settings import Settings

if TYPE_CHECKING:
    from deltalake import DeltaTable

#: zstd's fastest level: on ops it writes files as small as level 3 does (within 1%) for about
#: half the write's CPU (a backfill's whole run: about 8% less).
ZSTD_LEVEL = 1
#: Compacted files aim at this size (Delta's default is 100 MiB; a day of ops is rarely more).
TARGET_FILE_BYTES = 128 * 1024 * 1024
#: delta-rs's own retries when other hosts commit at the same moment (appends commute)…
COMMIT_RETRIES = 20
#: …and ours, when a commit is refused (the table was created twice at the same moment).
COMMIT_ATTEMPTS = 5


@dataclass(frozen=True)
class DaySummary:
    """One day partition, from the table's metadata (no data file read)."""

    day: date
    files: int
    rows: int
    bytes: int


class HistoryTable:
    """The table at `settings.history_location`, opened for one run (never kept longer: a vacuum
    may delete the files an old version names)."""

    def __init__(self, settings: Settings) -> None:
        self.uri = settings.history_location
        self.host = settings.instance_name
        self.is_remote = settings.history_is_remote

    def app_id(self, stream: str) -> str:
        return f"observer:{self.host}:{stream}"

    def open(self) -> DeltaTable | None:
        """The table's latest version, or None before its first commit."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri)
        except TableNotFoundError:
            return None

    def committed_end(self, table: DeltaTable | None, stream: str) -> int:
        """The stream position up to which `stream`'s ops are in the table (0: none yet)."""
        if table is None:
            return 0
        return table.transaction_version(self.app_id(stream)) or 0

    def append(
        self, table: DeltaTable | None, rows: pl.DataFrame, *, stream: str, end: int
    ) -> DeltaTable:
        """Commit `rows` as `stream`'s ops up to position `end`, against `table` as loaded;
        returns the table after the commit.

        A commit that conflicts (another host created the table at the same moment, which
        delta-rs lets land as a second metadata commit, and appends made from before it are then
        refused) changed nothing: the table is opened again and, unless it already holds these
        ops (`committed_end`), the commit is made again.
        """
        from deltalake import CommitProperties, Transaction, write_deltalake
        from deltalake.exceptions import CommitFailedError

        options: dict[str, Any] = {
            "mode": "append",
            "partition_by": [PARTITION_COLUMN],
            "writer_properties": _writer_properties(),
            "commit_properties": CommitProperties(
                app_transactions=[Transaction(self.app_id(stream), end)],
                custom_metadata={"observer.host": self.host, "observer.stream": stream},
                max_commit_retries=COMMIT_RETRIES,
            ),
        }
        rows = rows.select(list(HISTORY_SCHEMA))
        for attempt in range(COMMIT_ATTEMPTS):
            if table is None and not self.is_remote:
                Path(self.uri).mkdir(parents=True, exist_ok=True)
            try:
                write_deltalake(table if table is not None else self.uri, rows, **options)
                break
            except CommitFailedError:
                table = self.open()
                if self.committed_end(table, stream) >= end:
                    break  # the commit landed after all
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
        opened = self.open()
        assert opened is not None
        return opened

    def scan(self, table: DeltaTable) -> pl.LazyFrame:
        """The table at `table`'s version as a lazy frame (day partitions pruned by filters)."""
        return pl.scan_delta(table)

    # ── the table at a glance, and its upkeep ───────────────────────────────────────────────

    def days(self, table: DeltaTable) -> list[DaySummary]:
        """Files, rows and bytes per day, oldest first, from the add actions alone."""
        actions = pl.DataFrame(table.get_add_actions(flatten=True))
        if actions.height == 0:
            return []
        per_day = (
            actions.group_by(f"partition.{PARTITION_COLUMN}")
            .agg(
                pl.len().alias("files"),
                pl.col("num_records").sum().alias("rows"),
                pl.col("size_bytes").sum().alias("bytes"),
            )
            .sort(f"partition.{PARTITION_COLUMN}")
        )
        return [DaySummary(*row) for row in per_day.iter_rows()]

    def drop_days_before(self, table: DeltaTable, first_kept: date) -> list[date]:
        """Delete whole day partitions older than `first_kept` (metadata only: no file copied)."""
        dropped = [summary.day for summary in self.days(table) if summary.day < first_kept]
        if dropped:
            table.delete(f"{PARTITION_COLUMN} < '{first_kept.isoformat()}'")
        return dropped

    def compact(
        self, table: DeltaTable, days: list[date], on_day: Callable[[date], None] | None = None
    ) -> tuple[int, int]:
        """Rewrite each given day's small files into few large ones, in insertion order:
        (files removed, files added)."""
        removed = added = 0
        for day in days:
            metrics = table.optimize.compact(
                partition_filters=[(PARTITION_COLUMN, "=", day.isoformat())],
                target_size=TARGET_FILE_BYTES,
                writer_properties=_writer_properties(),
            )
            removed += metrics.get("numFilesRemoved", 0)
            added += metrics.get("numFilesAdded", 0)
            if on_day is not None:
                on_day(day)
        return removed, added

    def vacuum(
        self, table: DeltaTable, retention_hours: int, done: frozenset[str] = frozenset()
    ) -> tuple[int, frozenset[str]]:
        """Delete files no version newer than `retention_hours` needs: the ones compaction and
        retention replaced, and any a crashed writer left uncommitted. The log goes on naming
        deleted files until its own retention drops them, so `done` (what the last vacuum
        returned) is not deleted again: a vacuum with nothing new commits nothing. Returns how
        many files were deleted, and what to pass as `done` next time."""
        options: dict[str, Any] = {
            "retention_hours": retention_hours,
            "enforce_retention_duration": False,
            "full": True,
        }
        candidates = frozenset(table.vacuum(dry_run=True, **options))
        fresh = candidates - done
        if fresh:
            table.vacuum(dry_run=False, **options)
        return len(fresh), candidates

    def checkpoint(self, table: DeltaTable) -> None:
        """A checkpoint of the log (so opening the table reads one file, not every commit), and
        the log entries older than the table's log retention removed."""
        table.create_checkpoint()
        table.cleanup_metadata()


def _writer_properties() -> Any:
    from deltalake import WriterProperties

    return WriterProperties(compression="ZSTD", compression_level=ZSTD_LEVEL)
