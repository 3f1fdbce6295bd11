"""The spool and ingestion on real files: order, exactly once, crash repair, many writers."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from observer.files import read_tail
from observer.intake import record_ops
from observer.intake.checkpoint import spool_bytes_waiting
from observer.intake.spool import (
    BOOT_ID,
    PREALLOCATE_BYTES,
    SpoolPosition,
    SpoolRecord,
    SpoolWriter,
    encode_record,
    list_segments,
    read_spool,
    segment_path,
    segment_records,
)
from observer.ops import Op
from observer.pipelines.ingest import drain_spool
from observer.settings import Settings


def make_op(marker: str, success: bool = True, source: str = "scenario") -> Op:
    return Op(
        timestamp="2026-04-23T10:00:00.000Z",
        endpoint="scenario:fill",
        input_summary=marker,
        success=success,
        duration_ms=1,
        output_summary="filled",
        source=source,
    )


def ops_markers(settings: Settings) -> list[str]:
    if not settings.layout.ops_path.exists():
        return []
    return [
        Op.model_validate_json(line).input_summary
        for line in settings.layout.ops_path.read_bytes().splitlines()
    ]


def test_segments_rotate_and_ingestion_follows_them_in_order(
    settings: Settings, monkeypatch
) -> None:
    small = settings.model_copy(update={"spool_segment_bytes": 600})
    for n in range(20):
        record_ops(small, [(None, make_op(f"op-{n:02d}"))])
    segments = list_segments(small.layout.spool_dir)
    assert len(segments) > 3
    # Allocated ahead only up to the segment size (plus the write that crosses it).
    sizes = [segment_path(small.layout.spool_dir, s).stat().st_size for s in segments]
    assert max(sizes) < 600 + len(record("op-00"))
    report = drain_spool(small)
    assert report.ingested == 20
    assert ops_markers(small) == [f"op-{n:02d}" for n in range(20)]
    # drained segments are removed, the newest (still open for appends) stays
    assert len(list_segments(small.layout.spool_dir)) == 1


def test_a_crash_after_appending_before_the_checkpoint_neither_loses_nor_doubles(
    settings: Settings,
) -> None:
    record_ops(settings, [(None, make_op("first"))])
    drain_spool(settings)
    checkpoint = settings.layout.ingest_checkpoint.read_bytes()
    record_ops(settings, [(None, make_op("second")), ("id-3", make_op("third"))])
    drain_spool(settings)
    # Simulate dying after ops.jsonl and the id log were appended, before the checkpoint moved.
    settings.layout.ingest_checkpoint.write_bytes(checkpoint)
    report = drain_spool(settings)
    assert report.repaired_crash
    assert ops_markers(settings) == ["first", "second", "third"]
    assert settings.layout.ingested_ids.read_text() == "id-3\n"


def test_event_ids_are_ingested_once_even_across_runs(settings: Settings) -> None:
    record_ops(settings, [("a", make_op("a1")), ("b", make_op("b1")), ("a", make_op("a2"))])
    drain_spool(settings)
    record_ops(settings, [("b", make_op("b2")), (None, make_op("plain"))])
    report = drain_spool(settings)
    assert (report.ingested, report.duplicates) == (1, 1)
    assert ops_markers(settings) == ["a1", "b1", "plain"]


def test_an_existing_ops_file_is_adopted_not_truncated(settings: Settings) -> None:
    settings.layout.ops_path.parent.mkdir(parents=True)
    settings.layout.ops_path.write_bytes(b'{"old":1}\n{"torn":')
    record_ops(settings, [(None, make_op("new"))])
    drain_spool(settings)
    lines = settings.layout.ops_path.read_bytes().splitlines()
    assert lines[:2] == [b'{"old":1}', b'{"torn":']
    assert Op.model_validate_json(lines[2]).input_summary == "new"


def test_a_failed_write_leaves_nothing_behind(settings: Settings, tmp_path: Path) -> None:
    writer = SpoolWriter(settings.layout.spool_dir, settings.spool_segment_bytes)
    writer.append(encode_record(None, make_op("kept").to_line()))
    segment_path(settings.layout.spool_dir, 2).symlink_to("/dev/full")  # a disk that is full
    try:
        writer.append(encode_record(None, make_op("lost").to_line()))
    except OSError as exc:
        assert exc.errno == 28  # ENOSPC
    else:
        raise AssertionError("a write to a full disk must fail")
    segment_path(settings.layout.spool_dir, 2).unlink()
    writer.append(encode_record(None, make_op("after").to_line()))
    writer.close()
    chunk = read_spool(settings.layout.spool_dir, SpoolPosition(0, 0))
    assert markers_in(chunk.records) == ["kept", "after"]


def test_unterminated_records_wait_and_torn_ones_in_old_segments_are_skipped(
    settings: Settings,
) -> None:
    settings.layout.spool_dir.mkdir(parents=True)
    line = encode_record(None, make_op("whole").to_line())
    segment_path(settings.layout.spool_dir, 1).write_bytes(line + b"\t{partial")
    chunk = read_spool(settings.layout.spool_dir, SpoolPosition(1, 0))
    assert chunk.end == SpoolPosition(1, len(line)) and chunk.torn_bytes == 0
    segment_path(settings.layout.spool_dir, 2).write_bytes(line)
    chunk = read_spool(settings.layout.spool_dir, SpoolPosition(1, 0))
    assert chunk.end == SpoolPosition(2, len(line))
    assert chunk.torn_bytes == len(b"\t{partial")
    assert len(list(chunk.records)) == 2


def record(marker: str) -> bytes:
    return encode_record(None, make_op(marker).to_line())


def markers_in(records: Iterable[SpoolRecord]) -> list[str]:
    return [Op.model_validate_json(r.line).input_summary for r in records]


def test_a_segment_is_allocated_ahead_and_writers_continue_after_its_records(
    settings: Settings,
) -> None:
    spool = settings.layout.spool_dir
    first = SpoolWriter(spool, settings.spool_segment_bytes)
    first.append(record("a"))
    path = segment_path(spool, 1)
    records = record("a")
    assert path.stat().st_size == PREALLOCATE_BYTES  # space for what follows, read as zeros
    assert path.read_bytes() == records + bytes(PREALLOCATE_BYTES - len(records))
    second = SpoolWriter(spool, settings.spool_segment_bytes)  # another process, say
    second.append(record("b"))
    first.append(record("c"))  # it sees b and writes after it
    second.shutdown()
    first.shutdown()
    assert segment_records(path) == record("a") + record("b") + record("c")
    chunk = read_spool(spool, SpoolPosition(0, 0))
    assert markers_in(chunk.records) == ["a", "b", "c"]
    assert chunk.end == SpoolPosition(1, len(segment_records(path)))
    assert spool_bytes_waiting(settings) == chunk.end.offset


def test_a_batch_cut_back_is_zeroed_and_the_next_write_takes_its_place(settings: Settings) -> None:
    writer = SpoolWriter(settings.layout.spool_dir, settings.spool_segment_bytes)
    writer.append(record("kept"))
    start, end = writer.write(record("refused"))
    assert writer.cut_back(start, end)
    writer.append(record("next"))
    writer.shutdown()
    assert segment_records(segment_path(settings.layout.spool_dir, 1)) == (
        record("kept") + record("next")
    )


def test_after_the_machine_restarts_writers_start_a_new_segment(settings: Settings) -> None:
    """A crash of the machine can lose a block of records that were never made durable and keep
    the next one: the segment then holds zeros between records. Nothing may be written after that
    hole (readers stop at it), so the first writer of a boot starts a new segment."""
    spool = settings.layout.spool_dir
    record_ops(settings, [(None, make_op("durable"))])
    path = segment_path(spool, 1)
    kept = segment_records(path)
    with path.open("r+b") as segment:  # as a crash may leave it: a hole, then a later record
        segment.seek(len(kept) + 4096)
        segment.write(record("never acknowledged"))
    (spool / ".lock").write_bytes(b"the boot before")
    record_ops(settings, [(None, make_op("after the restart"))])
    assert list_segments(spool) == [1, 2]
    assert segment_records(path) == kept
    chunk = read_spool(spool, SpoolPosition(0, 0))
    assert markers_in(chunk.records) == ["durable", "after the restart"]
    assert (spool / ".lock").read_bytes() == BOOT_ID
    record_ops(settings, [(None, make_op("same boot"))])
    assert list_segments(spool) == [1, 2]


def _append_many(settings: Settings, worker: int) -> None:
    for n in range(200):
        record_ops(settings, [(f"w{worker}-{n}", make_op(f"w{worker}-{n}"))])


def test_several_processes_append_without_tearing_records(settings: Settings) -> None:
    small = settings.model_copy(update={"spool_segment_bytes": 20_000})
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(small, w)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    drain_spool(small)
    markers = ops_markers(small)
    assert sorted(markers) == sorted(f"w{w}-{n}" for w in range(4) for n in range(200))
    for w in range(4):  # each writer's own order is kept
        mine = [m for m in markers if m.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{n}" for n in range(200)]


def test_read_tail_reads_only_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"".join(b"%d\n" % n for n in range(100_000)) + b"partial")
    assert read_tail(path, 3).lines == [b"99997", b"99998", b"99999"]
    assert read_tail(tmp_path / "missing", 3).lines == []


def test_a_lingering_drain_takes_what_arrives_until_the_spool_stays_empty(
    settings: Settings,
) -> None:
    record_ops(settings, [(None, make_op("before"))])

    def late_records() -> None:
        for n in range(3):  # gaps shorter than the linger: the same drain takes them all
            time.sleep(0.4)
            record_ops(settings, [(None, make_op(f"late-{n}"))])

    writer = threading.Thread(target=late_records)
    started = time.monotonic()
    writer.start()
    report = drain_spool(settings, linger_seconds=1.0)
    writer.join()
    assert ops_markers(settings) == ["before", "late-0", "late-1", "late-2"]
    assert report.ingested == 4 and report.batches == 4
    assert time.monotonic() - started >= 2.2  # 3 x 0.4 s of arrivals, then 1 s of quiet
