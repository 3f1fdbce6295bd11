"""The overseer's corrections file, tailed into ops without loss or duplicates.

Each run resumes from a checkpoint on disk (file identity: device, inode and a fingerprint of the
first line; byte offset; how long an unterminated last line has been waiting), reads only complete
lines in bounded chunks, records each valid row as an op through the intake and puts every bad line
in a quarantine file with its reason and offset. The checkpoint is replaced atomically only after
the ops and quarantine lines it covers are durable, so a crash in between re-reads those rows; their
ids (first-line fingerprint + byte offset) are stable, so the intake drops the second copy.

Rotation is handled like a log shipper: a file that is smaller than the offset, has another inode
or another first line is read from byte 0, after the rest of the old file (found next to it by inode
or fingerprint, e.g. `overseer_corrections.jsonl.1`) has been read to its end.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, computed_field

from observer.errors import BadRow, QuarantineKind
from observer.files import append_durably, file_lock, load_state, save_state
from observer.identity import FileMark, has_fingerprint, line_fingerprint
from observer.intake import record_lines
from observer.lines import CHUNK_BYTES, Line, read_lines
from observer.ops import cut, now_timestamp, op_line
from observer.pipelines.parameters import FlowParameters
from observer.pipelines.report import Artifact, CountingReport
from observer.progress import Progress, ProgressReport
from observer.settings import Settings
from observer.values import json_type_name, number_from_text

BATCH_ROWS = 5000
BATCH_BYTES = 8 * 1024 * 1024
#: A read of more than this (about a second of tailing) shows its progress.
PROGRESS_ABOVE_BYTES = 16 * 1024 * 1024
DEFAULT_MODEL = "gpt-oss:120b"


# ── rows ────────────────────────────────────────────────────────────────────────────────────────


def _number_from_text(value: object) -> object:
    """Accept `"42"` for 42 (JSON's number form only, as for `POST /event`); anything else is left
    to strict validation."""
    return number_from_text(value) if isinstance(value, str) else value


JsonNumber = Annotated[int | float, BeforeValidator(_number_from_text)]


class Usage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    latency_ms: JsonNumber | None = None


class CorrectionRow(BaseModel):
    """The fields of a corrections row that become an op; wrong types send the row to quarantine."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    created_at: str | None = None
    model: str | None = None
    task_class: str | None = None
    reason: str | None = None
    correction: str | None = None
    sig_hash: str | None = None
    applied_at_turn: JsonNumber | None = None
    usage: Usage | None = None

    def to_fields(self) -> dict[str, Any]:
        """The op's present fields as contract.md says (the original's `??` defaults: only
        null/absent), validated: what `op_line` writes without building an `Op`."""
        correction = self.correction if self.correction is not None else ""
        latency = self.usage.latency_ms if self.usage is not None else None
        present = self.model_fields_set
        return {
            "timestamp": self.created_at if self.created_at is not None else now_timestamp(),
            "endpoint": f"overseer:{self.model if self.model is not None else DEFAULT_MODEL}",
            "input_summary": (
                f"{self.task_class if self.task_class is not None else '?'}: "
                f"{self.reason if self.reason is not None else 'escalation'}"
            ),
            "success": True,
            "duration_ms": latency if latency is not None else 0,
            "output_summary": cut(correction, 200),
            "source": "overseer_correction",
            **{key: getattr(self, key) for key in ("sig_hash", "task_class") if key in present},
            "correction": correction,
            "applied_at_turn": self.applied_at_turn if self.applied_at_turn is not None else 0,
        }


def parse_row(raw: bytes) -> CorrectionRow:
    """One line (no newline) as a validated row, or BadRow saying why not."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise BadRow("invalid_utf8", f"invalid UTF-8 at byte {bad.start}") from None
        raise BadRow("invalid_json", f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRow("not_object", f"a row must be a JSON object, got {json_type_name(value)}")
    try:
        return CorrectionRow.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'row'}: {error['msg']}"
            for error in exc.errors()
        )
        raise BadRow("bad_field", problems) from None


def row_event_id(fingerprint: str | None, offset: int, data: bytes) -> str:
    """Stable across runs, crashes and re-reads: the file's first-line fingerprint, the offset and
    a checksum of the line (so a truncated file rewritten from the same first line gets new ids)."""
    return f"corr:{fingerprint or 'empty'}:{offset}:{zlib.crc32(data):08x}"


# ── checkpoint and report ───────────────────────────────────────────────────────────────────────


class CorrectionsCheckpoint(FileMark):
    """Which file was read up to where; replaced atomically after what it covers is durable."""

    pending_bytes: int = 0  # an unterminated last line at `offset`, this long when last seen…
    pending_since: float | None = None  # …since this wall-clock time (for the grace period)
    #: Where the unterminated last line taken as a row (its grace over) starts; it ends at
    #: `offset`. Should the file go on there, that line was not over: it is read again whole.
    open_line: int | None = None
    rows_total: int = 0
    quarantined_total: int = 0
    rotations_total: int = 0


class TailParameters(FlowParameters):
    """Parameters of a tailing run (shown as a form in the Prefect UI); empty means the setting."""

    from_offset: int | None = Field(
        None,
        ge=0,
        description="re-read the current file from this byte (moved to the next line start);"
        " rows already recorded are dropped as duplicates",
    )
    grace_seconds: float | None = Field(
        None,
        ge=0,
        description="take an unterminated last line as a row once it stayed unchanged this long"
        " (default OBSERVER_CORRECTIONS_GRACE_SECONDS)",
    )
    max_bytes: int | None = Field(
        None,
        gt=0,
        description="read at most about this many bytes in this run; the rest waits for the next"
        " (default OBSERVER_CORRECTIONS_MAX_BYTES_PER_RUN)",
    )

    @property
    def label(self) -> str:
        parts = ["new rows" if self.from_offset is None else f"from byte {self.from_offset}"]
        if self.grace_seconds is not None:
            parts.append(f"grace {self.grace_seconds:g}s")
        if self.max_bytes is not None:
            parts.append(f"at most {self.max_bytes} bytes")
        return ", ".join(parts)


class TailReport(CountingReport):
    """What one run did: for its logs and its table artifact."""

    path: str = ""
    file_found: bool = False
    busy: bool = False
    rows_read: int = 0
    recorded: int = 0
    quarantined: int = 0
    quarantined_by_kind: dict[str, int] = Field(default_factory=dict)
    blank_lines: int = 0
    start_offset: int = 0
    offset: int = 0
    size: int = 0
    pending_bytes: int = 0
    budget_reached: bool = False
    events: list[str] = Field(default_factory=list)  # rotation, truncation, re-read, grace, …

    @computed_field  # type: ignore[prop-decorator]
    @property
    def lag_bytes(self) -> int:
        """Bytes of the file not read yet (an unterminated last line among them)."""
        return max(0, self.size - self.offset)

    def artifacts(self) -> list[Artifact]:
        """A table of (measure, value) rows: counts, quarantine kinds, then what happened."""
        rows = self.rows("quarantined_by_kind", "quarantined", self.events, exclude={"events"})
        description = (
            f"Corrections tailing: {self.recorded} op(s) recorded, {self.quarantined}"
            f" quarantined, lag {self.lag_bytes} byte(s)"
        )
        return [Artifact("tail-corrections", description, table=rows)]


# ── one run ─────────────────────────────────────────────────────────────────────────────────────


@dataclass
class _Batch:
    entries: list[tuple[str, bytes]] = field(default_factory=list)  # (event id, ops.jsonl line)
    quarantine: list[bytes] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    blank: int = 0
    size: int = 0

    def __len__(self) -> int:
        return len(self.entries) + len(self.quarantine) + self.blank


@dataclass
class _Run:
    """State of one tailing run over one file handle; commits batch by batch."""

    settings: Settings
    checkpoint: CorrectionsCheckpoint
    report: TailReport
    path: Path
    batch: _Batch = field(default_factory=_Batch)
    reading: Path | None = None  # the file being drained: `path`, or a rotated-away one
    progress: Progress | None = None  # of the current file's read, from `progress_base` bytes
    progress_base: int = 0

    def take(self, line: Line) -> None:
        batch = self.batch
        if line.offset == 0 and self.checkpoint.fingerprint is None:
            self._identify(line.data)
        batch.size += line.end - line.offset
        event_id = row_event_id(self.checkpoint.fingerprint, line.offset, line.data)
        if line.too_long:
            limit = self.settings.corrections_max_line_bytes
            self._quarantine(line, event_id, "too_long", f"line of {line.length} bytes > {limit}")
            return
        if not line.data.strip():
            batch.blank += 1
            return
        try:
            batch.entries.append((event_id, op_line(parse_row(line.data).to_fields())))
        except BadRow as bad:
            self._quarantine(line, event_id, bad.kind, str(bad))

    def _identify(self, first_line: bytes) -> None:
        fingerprint, covered = line_fingerprint(first_line)
        self.checkpoint = self.checkpoint.model_copy(
            update={"fingerprint": fingerprint, "fingerprint_bytes": covered}
        )

    def _quarantine(self, line: Line, event_id: str, kind: QuarantineKind, reason: str) -> None:
        entry = {
            "quarantined_at": now_timestamp(),
            "id": event_id,
            "file": str(self.reading or self.path),
            "offset": line.offset,
            "length": line.length,
            "kind": kind,
            "reason": reason,
            "raw": line.data.decode("utf-8", errors="backslashreplace"),
            "raw_complete": not line.too_long,
        }
        self.batch.quarantine.append(orjson.dumps(entry) + b"\n")
        self.batch.kinds.append(kind)

    def full(self) -> bool:
        return len(self.batch) >= BATCH_ROWS or self.batch.size >= BATCH_BYTES

    def commit(self, end: int, open_line: int | None = None) -> None:
        """Make the batch durable (quarantine, then ops), then move the checkpoint to `end`
        (`open_line`: where the unterminated line that ends there starts)."""
        batch, report = self.batch, self.report
        if batch.quarantine:
            append_durably(self.settings.layout.corrections_quarantine, b"".join(batch.quarantine))
        if batch.entries:
            record_lines(self.settings, batch.entries)
        self.checkpoint = self.checkpoint.model_copy(
            update={
                "offset": end,
                "pending_bytes": 0,
                "pending_since": None,
                "open_line": open_line,
                "rows_total": self.checkpoint.rows_total + len(batch.entries),
                "quarantined_total": self.checkpoint.quarantined_total + len(batch.quarantine),
            }
        )
        save_state(self.settings.layout.corrections_checkpoint, self.checkpoint)
        report.rows_read += len(batch.entries) + len(batch.quarantine)
        report.recorded += len(batch.entries)
        report.quarantined += len(batch.quarantine)
        for kind in batch.kinds:
            report.quarantined_by_kind[kind] = report.quarantined_by_kind.get(kind, 0) + 1
        report.blank_lines += batch.blank
        report.bytes_read += batch.size
        report.batches += 1
        self.batch = _Batch()
        if self.progress is not None:
            self.progress.update(
                report.bytes_read - self.progress_base, note=f"{report.rows_read} row(s)"
            )

    def wait_for(self, line: Line, now: float) -> None:
        """Remember an unterminated last line, restarting its grace period if it grew."""
        checkpoint = self.checkpoint
        if checkpoint.pending_bytes == line.length and checkpoint.pending_since is not None:
            return
        self.checkpoint = checkpoint.model_copy(
            update={"pending_bytes": line.length, "pending_since": now}
        )
        save_state(self.settings.layout.corrections_checkpoint, self.checkpoint)

    def _reopen_a_continued_line(self, handle: BinaryIO) -> None:
        """If the file goes on where an unterminated line was taken as a row, that line was not
        over: read it again from its start, whole, under its own id (a newline there only ends
        it, and is skipped as a blank line)."""
        checkpoint = self.checkpoint
        if checkpoint.open_line is None:
            return
        handle.seek(checkpoint.offset)
        following = handle.read(1)
        if not following:
            return  # nothing more yet
        if following != b"\n":
            self.report.events.append(
                f"the unterminated line taken at byte {checkpoint.open_line} went on: reading it"
                " again whole"
            )
            update: dict[str, object] = {"offset": checkpoint.open_line, "open_line": None}
        else:
            update = {"open_line": None}
        self.checkpoint = checkpoint.model_copy(update=update)

    def grace_over(self, line: Line, now: float, grace_seconds: float) -> bool:
        checkpoint = self.checkpoint
        if grace_seconds <= 0:
            return True
        return (
            line.offset == checkpoint.offset
            and checkpoint.pending_bytes == line.length
            and checkpoint.pending_since is not None
            and now - checkpoint.pending_since >= grace_seconds
        )

    def drain(
        self,
        handle: BinaryIO,
        source: Path,
        *,
        final: bool,
        grace_seconds: float,
        budget: int,
        now: float,
    ) -> bool:
        """Read from the checkpoint offset to the end (or the byte budget) and commit as it goes.

        `final`: the file will not grow any more (rotated away), so an unterminated tail is a row.
        Returns True when the end of the file was reached.
        """
        self.reading = source
        self._reopen_a_continued_line(handle)
        start = end = self.checkpoint.offset
        max_line = self.settings.corrections_max_line_bytes
        for line in read_lines(handle, start, max_line_bytes=max_line):
            if line.terminated or final or self.grace_over(line, now, grace_seconds):
                if not line.terminated and not final:
                    self.report.events.append(f"took an unterminated last line at byte {end}")
                self.take(line)
                end = line.end
                if not line.terminated:
                    self.commit(end, open_line=line.offset)
                elif self.full():
                    self.commit(end)
                if line.terminated and end - start >= budget:
                    self.report.budget_reached = True
                    break
                continue
            if len(self.batch):
                self.commit(end)
            self.wait_for(line, now)
            self.report.pending_bytes = line.length
        if len(self.batch):
            self.commit(end)
        return not self.report.budget_reached


def nothing_new(settings: Settings, params: TailParameters) -> str | None:
    """Why a scheduled run would find nothing to read (the file unchanged since the checkpoint, or
    not there), or None. A stat and a first-line check: a quiet run stops here."""
    if params.from_offset is not None:
        return None
    path = settings.corrections_path
    try:
        stat = path.stat()
    except FileNotFoundError:
        return f"nothing new: {path} does not exist yet"
    checkpoint = load_state(settings.layout.corrections_checkpoint, CorrectionsCheckpoint)
    if checkpoint.ino is None or stat.st_size > checkpoint.offset or checkpoint.change(path, stat):
        return None
    return f"nothing new: {path.name} unchanged at byte {checkpoint.offset}"


def tail_corrections(
    settings: Settings,
    *,
    from_offset: int | None = None,
    grace_seconds: float | None = None,
    max_bytes: int | None = None,
    now: float | None = None,
    on_progress: ProgressReport | None = None,
    progress_above: int = PROGRESS_ABOVE_BYTES,
) -> TailReport:
    """Record the corrections file's new rows as ops; one run, resumable at any point.

    `from_offset` re-reads the current file from that byte (moved to the next line start); rows
    already recorded are dropped by the intake's idempotency. `now` is for tests of the grace period.
    A read of more than `progress_above` bytes (a re-read from byte 0, a large backlog) reports
    its progress to `on_progress` after each batch (bytes, rows, rate, time left).
    """
    started = time.monotonic()
    path = settings.corrections_path
    report = TailReport(path=str(path))
    grace = settings.corrections_grace_seconds if grace_seconds is None else grace_seconds
    budget = settings.corrections_max_bytes_per_run if max_bytes is None else max_bytes
    wall = time.time() if now is None else now
    with file_lock(settings.layout.corrections_lock, blocking=False) as locked:
        if not locked:
            report.busy = True
            return report
        checkpoint = load_state(settings.layout.corrections_checkpoint, CorrectionsCheckpoint)
        report.offset = report.start_offset = checkpoint.offset
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return report  # not written yet: nothing to do, not an error
        with open(fd, "rb") as handle:
            report.file_found = True
            run = _Run(settings, checkpoint, report, path)
            if _follow_identity(run, handle, grace, budget, wall):
                if from_offset is not None:
                    _rewind(run, handle, from_offset)
                report.start_offset = run.checkpoint.offset
                size = os.fstat(handle.fileno()).st_size
                to_read = min(max(0, size - run.checkpoint.offset), budget)
                run.progress = Progress.maybe(
                    "corrections read", to_read, on_progress, above=progress_above
                )
                run.progress_base = report.bytes_read
                run.drain(handle, path, final=False, grace_seconds=grace, budget=budget, now=wall)
                run.progress.finish()
            report.size = os.fstat(handle.fileno()).st_size
            report.offset = run.checkpoint.offset
    report.seconds = round(time.monotonic() - started, 4)
    return report


def _follow_identity(run: _Run, handle: BinaryIO, grace: float, budget: int, now: float) -> bool:
    """Make the checkpoint describe the file now at the path, finishing a rotated-away one first.

    Returns False when this run must not read the file at the path yet (the old one is unfinished).
    """
    checkpoint = run.checkpoint
    stat = os.fstat(handle.fileno())
    change = checkpoint.change(run.path, stat)
    if change is None:
        if checkpoint.ino is None or checkpoint.fingerprint is None:
            run.checkpoint = checkpoint.identified(handle)
        return True
    consumed = checkpoint.offset > 0 or checkpoint.pending_bytes > 0
    if consumed:
        run.report.events.append(f"{change}: reading {run.path.name} from byte 0")
        rotated = _find_rotated(run.path, checkpoint)
        if rotated is not None:
            # With logrotate's "create" the writer appends to the renamed file until it reopens:
            # while the new file is empty, the old one is still tailed as usual.
            final = stat.st_size > 0
            run.report.events.append(f"{'finishing' if final else 'following'} {rotated.name}")
            with open(rotated, "rb") as old:
                finished = run.drain(
                    old, rotated, final=final, grace_seconds=grace, budget=budget, now=now
                )
            if not (final and finished):
                return False
        elif change != "truncated":
            run.report.events.append("the rotated file is not next to it: its unread rest is lost")
    fresh = CorrectionsCheckpoint(
        rows_total=run.checkpoint.rows_total,
        quarantined_total=run.checkpoint.quarantined_total,
        rotations_total=run.checkpoint.rotations_total + (1 if consumed else 0),
    )
    run.checkpoint = fresh.identified(handle)
    save_state(run.settings.layout.corrections_checkpoint, run.checkpoint)
    return True


def _find_rotated(path: Path, checkpoint: CorrectionsCheckpoint) -> Path | None:
    """The old file next to `path` (`name.1`, `name-2026…`): same inode, or same first line."""
    try:
        siblings = [
            Path(entry.path)
            for entry in os.scandir(path.parent)
            if entry.name.startswith(path.name) and entry.name != path.name and entry.is_file()
        ]
    except OSError:
        return None
    for sibling in siblings:
        stat = sibling.stat()
        if (stat.st_dev, stat.st_ino) == (checkpoint.dev, checkpoint.ino):
            return sibling
    if checkpoint.fingerprint is None:
        return None
    for sibling in siblings:
        if sibling.stat().st_size >= checkpoint.offset and has_fingerprint(
            sibling, checkpoint.fingerprint, checkpoint.fingerprint_bytes
        ):
            return sibling
    return None


def _rewind(run: _Run, handle: BinaryIO, offset: int) -> None:
    """Re-read from `offset`, moved forward to the start of a line so no row is read half."""
    size = os.fstat(handle.fileno()).st_size
    target = min(max(0, offset), size)
    if target > 0:
        handle.seek(target - 1)
        skipped = 0
        while chunk := handle.read(CHUNK_BYTES):
            newline = chunk.find(b"\n")
            if newline >= 0:
                skipped += newline
                break
            skipped += len(chunk)
        target = min(target + skipped, size)
    run.report.events.append(f"re-reading from byte {target} (asked {offset})")
    run.checkpoint = run.checkpoint.model_copy(
        update={"offset": target, "pending_bytes": 0, "pending_since": None, "open_line": None}
    )
