"""The corrections tailer: real files, the real intake and ingestion, and real Prefect for the flow.

What reaches ops.jsonl is checked through `drain_spool`, so a duplicate the intake lets through, or a
row lost between runs, shows up in the assertions.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.states import State

import observer.pipelines.corrections as corrections
from flows.tail_corrections import tail_corrections as tail_flow
from observer.files import load_state
from observer.intake.spool import list_segments, segment_path, segment_records
from observer.lines import KEPT_PREFIX_BYTES, read_lines
from observer.ops import Op, op_line
from observer.pipelines.corrections import (
    BATCH_ROWS,
    CorrectionsCheckpoint,
    TailParameters,
    parse_row,
    tail_corrections,
)
from observer.pipelines.ingest import drain_spool
from observer.settings import Settings


def _row(n: int, **extra: object) -> bytes:
    row = {"task_class": "staffing.fill", "correction": f"c{n}", "created_at": f"t{n}"}
    return json.dumps({**row, **extra}).encode() + b"\n"


def _rows(numbers: range) -> bytes:
    return b"".join(_row(n) for n in numbers)


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        handle.write(data)


def _ingested(settings: Settings) -> list[str]:
    """The `correction` of every op in ops.jsonl, after moving the spool there."""
    drain_spool(settings)
    if not settings.layout.ops_path.exists():
        return []
    return [
        json.loads(line)["correction"]
        for line in settings.layout.ops_path.read_bytes().splitlines()
    ]


def _spooled(settings: Settings) -> int:
    """Records in the spool (ingested or not): shows what the intake had to drop."""
    segments = list_segments(settings.layout.spool_dir)
    return sum(
        segment_records(segment_path(settings.layout.spool_dir, s)).count(b"\n") for s in segments
    )


def _quarantined(settings: Settings) -> list[dict[str, object]]:
    path = settings.layout.corrections_quarantine
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _names(numbers: range) -> list[str]:
    return [f"c{n}" for n in numbers]


# ── rows → ops ──────────────────────────────────────────────────────────────────────────────────


def test_a_full_row_becomes_the_contract_op_line() -> None:
    raw = (
        b'{"created_at":"2026-04-23T10:00:00.123Z","model":"qwen3","task_class":"staffing.fill",'
        b'"reason":"drift","correction":"' + "é".encode() * 250 + b'","sig_hash":"ab12",'
        b'"applied_at_turn":3,"usage":{"latency_ms":812.5,"tokens":9},"extra":[1]}'
    )
    line = op_line(parse_row(raw).to_fields())
    assert line == (
        b'{"timestamp":"2026-04-23T10:00:00.123Z","endpoint":"overseer:qwen3",'
        b'"input_summary":"staffing.fill: drift","success":true,"duration_ms":812.5,'
        b'"output_summary":"' + "é".encode() * 200 + b'","source":"overseer_correction",'
        b'"sig_hash":"ab12","task_class":"staffing.fill","correction":"'
        + "é".encode() * 250
        + b'","applied_at_turn":3}'
    )


def test_an_empty_row_gets_the_original_defaults() -> None:
    op = Op(**parse_row(b'{"sig_hash":null,"applied_at_turn":"4"}').to_fields())
    line = op.to_line().decode()
    assert line.startswith('{"timestamp":"')
    assert line.endswith(
        '"endpoint":"overseer:gpt-oss:120b","input_summary":"?: escalation","success":true,'
        '"duration_ms":0,"output_summary":"","source":"overseer_correction","sig_hash":null,'
        '"correction":"","applied_at_turn":4}'
    )


def test_numbers_beyond_2_53_are_written_as_the_originals_doubles() -> None:
    row = parse_row(
        b'{"created_at":"t","applied_at_turn":12345678901234567890,'
        b'"usage":{"latency_ms":"9007199254740993"}}'
    )
    line = op_line(row.to_fields())
    assert b'"duration_ms":9007199254740992,' in line
    assert line.endswith(b'"applied_at_turn":12345678901234567000}')
    assert Op(**row.to_fields()).to_line() == line


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"null", "not_object"),
        (b"[1,2]", "not_object"),
        (b"42", "not_object"),
        (b'"text"', "not_object"),
        (b'{"correction":{"toString":1}}', "bad_field"),
        (b'{"applied_at_turn":true}', "bad_field"),
        (b'{"usage":{"latency_ms":"fast"}}', "bad_field"),
        (b'{"usage":7}', "bad_field"),
        (b'{"model":"\xff"}', "invalid_utf8"),
        (b'{"model":', "invalid_json"),
        (b'{"applied_at_turn":"1_000"}', "bad_field"),
        (b'{"usage":{"latency_ms":" 42 "}}', "bad_field"),
        (b'{"applied_at_turn":"Infinity"}', "bad_field"),
        (b'{"applied_at_turn":"1' + b"0" * 400 + b'"}', "bad_field"),
        (b'{"applied_at_turn":1e400}', "invalid_json"),
    ],
)
def test_bad_rows_are_refused_with_a_kind(raw: bytes, kind: str) -> None:
    with pytest.raises(corrections.BadRow) as refused:
        parse_row(raw)
    assert refused.value.kind == kind


# ── bounded line reading ────────────────────────────────────────────────────────────────────────


def test_read_lines_matches_a_plain_split_at_any_chunk_size() -> None:
    rng = random.Random(7)
    lines = [bytes(rng.choice(b"ab{}") for _ in range(rng.randrange(0, 40))) for _ in range(300)]
    data = b"\n".join(lines) + b"\nunterminated"
    for chunk in (1, 3, 16, 4096):
        got = list(read_lines(io.BytesIO(data), 0, max_line_bytes=30, chunk_bytes=chunk))
        assert [line.data for line in got if not line.too_long] == [
            line for line in [*lines, b"unterminated"] if len(line) <= 30
        ]
        assert [line.length for line in got] == [len(line) for line in [*lines, b"unterminated"]]
        assert got[-1].terminated is False and got[-1].end == len(data)
        assert all(a.end == b.offset for a, b in itertools.pairwise(got))


def test_a_huge_line_is_scanned_but_only_its_prefix_kept() -> None:
    data = b'{"a":1}\n' + b"x" * 5_000_000 + b'\n{"b":2}\n'
    got = list(read_lines(io.BytesIO(data), 0, max_line_bytes=1024, chunk_bytes=64 * 1024))
    assert [(line.offset, line.length, line.too_long) for line in got] == [
        (0, 7, False),
        (8, 5_000_000, True),
        (5_000_009, 7, False),
    ]
    assert len(got[1].data) == KEPT_PREFIX_BYTES


# ── the tailer over real files ──────────────────────────────────────────────────────────────────


def test_a_missing_file_is_not_an_error(settings: Settings) -> None:
    report = tail_corrections(settings)
    assert (report.file_found, report.rows_read, report.lag_bytes) == (False, 0, 0)


def test_every_bad_row_is_quarantined_and_the_run_goes_on(settings: Settings) -> None:
    bad = [
        b"null",
        b"[1]",
        b"3.5",
        b'{"correction":{"toString":1}}',
        b'{"correction":"\xff\xfe"}',
        b'{"correction":"' + b"x" * 5 * 1024 * 1024 + b'"}',
    ]
    _append(settings.corrections_path, _row(0) + b"\n".join(bad) + b"\n" + _row(1))
    report = tail_corrections(settings)

    assert _ingested(settings) == _names(range(2))
    assert (report.rows_read, report.recorded, report.quarantined) == (8, 2, 6)
    assert report.quarantined_by_kind == {
        "not_object": 3,
        "bad_field": 1,
        "invalid_utf8": 1,
        "too_long": 1,
    }
    entries = _quarantined(settings)
    offsets = [len(_row(0)) + sum(len(b) + 1 for b in bad[:i]) for i in range(len(bad))]
    assert [e["offset"] for e in entries] == offsets
    assert entries[0]["raw"] == "null" and entries[0]["reason"]
    assert entries[5]["length"] == len(bad[5]) and len(entries[5]["raw"]) == KEPT_PREFIX_BYTES
    assert report.lag_bytes == 0


def test_partial_line_waits_for_its_newline(settings: Settings) -> None:
    path = settings.corrections_path
    whole = _row(1)
    _append(path, _row(0) + whole[:10])
    first = tail_corrections(settings, grace_seconds=3600)
    assert (first.recorded, first.pending_bytes, first.lag_bytes) == (1, 10, 10)

    _append(path, whole[10:])
    second = tail_corrections(settings, grace_seconds=3600)
    assert second.recorded == 1 and second.lag_bytes == 0
    assert _ingested(settings) == _names(range(2))


def test_an_unterminated_line_is_taken_after_the_grace_period(settings: Settings) -> None:
    path = settings.corrections_path
    _append(path, _row(0).rstrip(b"\n"))
    assert tail_corrections(settings, grace_seconds=60, now=1000.0).recorded == 0
    assert tail_corrections(settings, grace_seconds=60, now=1059.0).recorded == 0
    _append(path, b" ")  # it grew: the grace period starts again
    assert tail_corrections(settings, grace_seconds=60, now=1100.0).recorded == 0
    assert tail_corrections(settings, grace_seconds=60, now=1150.0).recorded == 0
    taken = tail_corrections(settings, grace_seconds=60, now=1160.0)
    assert (taken.recorded, taken.lag_bytes) == (1, 0)

    _append(path, b"\n" + _row(1))  # its late newline is a blank line, not a row
    assert tail_corrections(settings, grace_seconds=60).recorded == 1
    assert _ingested(settings) == _names(range(2))
    assert _quarantined(settings) == []


def test_restart_with_the_same_checkpoint_reads_only_new_rows(settings: Settings) -> None:
    _append(settings.corrections_path, _rows(range(5)))
    assert tail_corrections(settings).recorded == 5
    assert tail_corrections(settings).recorded == 0
    _append(settings.corrections_path, _rows(range(5, 8)))
    assert tail_corrections(settings).recorded == 3
    assert _ingested(settings) == _names(range(8))
    assert _spooled(settings) == 8


def test_truncation_starts_the_file_again(settings: Settings) -> None:
    path = settings.corrections_path
    _append(path, _rows(range(5)))
    tail_corrections(settings)
    path.write_bytes(_row(0) + _row(5))  # smaller than the offset, same inode and first line
    report = tail_corrections(settings)
    assert report.recorded == 2 and any("truncated" in e for e in report.events)
    assert _ingested(settings) == _names(range(6))  # row 0 again at byte 0: the same row


def test_copy_truncate_finishes_the_copy_then_reads_the_new_start(settings: Settings) -> None:
    path = settings.corrections_path
    _append(path, _rows(range(3)))
    tail_corrections(settings)
    _append(path, _rows(range(3, 5)))  # written before the copy, never read from `path`
    shutil.copyfile(path, path.with_name(path.name + ".1"))
    with open(path, "r+b") as handle:
        handle.truncate(0)
    _append(path, _rows(range(5, 12)))  # longer than the old offset: only the first line tells
    report = tail_corrections(settings)
    assert report.recorded == 9
    assert _ingested(settings) == _names(range(12))


def test_rename_and_new_file_loses_nothing(settings: Settings) -> None:
    path = settings.corrections_path
    _append(path, _rows(range(3)))
    tail_corrections(settings)
    _append(path, _rows(range(3, 5)))
    rotated = path.with_name(path.name + ".1")
    path.rename(rotated)
    path.touch()  # logrotate "create": the writer still appends to the renamed file
    _append(rotated, _rows(range(5, 6)) + b"null\n")
    following = tail_corrections(settings)
    assert (following.recorded, following.quarantined) == (3, 1)
    assert _quarantined(settings)[0]["file"] == str(rotated)
    _append(path, _rows(range(6, 8)))  # the writer reopened
    report = tail_corrections(settings)
    assert report.recorded == 2 and any("new inode" in e for e in report.events)
    assert tail_corrections(settings).recorded == 0
    assert _ingested(settings) == _names(range(8))
    assert (
        load_state(settings.layout.corrections_checkpoint, CorrectionsCheckpoint).rotations_total
        == 1
    )


def test_crash_between_record_and_checkpoint_leaves_no_duplicate(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _append(settings.corrections_path, _rows(range(4)))

    def crash(path: Path, state: object) -> None:
        raise RuntimeError("killed before the checkpoint")

    monkeypatch.setattr(corrections, "save_state", crash)
    with pytest.raises(RuntimeError):
        tail_corrections(settings)
    monkeypatch.undo()
    assert not settings.layout.corrections_checkpoint.exists()

    _append(settings.corrections_path, _rows(range(4, 6)))
    assert tail_corrections(settings).recorded == 6  # the 4 again, and the 2 new ones
    assert _spooled(settings) == 10
    assert _ingested(settings) == _names(range(6))


def test_re_reading_from_an_offset_mid_line_records_no_duplicate(settings: Settings) -> None:
    _append(settings.corrections_path, _rows(range(6)))
    tail_corrections(settings)
    report = tail_corrections(settings, from_offset=len(_rows(range(2))) + 3)
    assert report.start_offset == len(_rows(range(3)))  # moved to the next line start
    assert report.recorded == 3 and report.quarantined == 0
    assert _ingested(settings) == _names(range(6))


def test_the_byte_budget_stops_at_a_line_and_the_next_run_continues(settings: Settings) -> None:
    _append(settings.corrections_path, _rows(range(10)))
    first = tail_corrections(settings, max_bytes=len(_row(0)) * 3)
    assert first.budget_reached and first.recorded == 3
    assert first.lag_bytes == len(_rows(range(3, 10)))
    assert tail_corrections(settings).recorded == 7
    assert _ingested(settings) == _names(range(10))


# ── the flow, against a real Prefect server ─────────────────────────────────────────────────────


async def _artifact(key: str) -> list[dict[str, object]]:
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts()
    return json.loads(next(a.data for a in artifacts if a.key == key))


@pytest.mark.usefixtures("prefect_server")
def test_flow_tails_10k_rows_while_the_file_grows(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = settings.corrections_path
    total = 10_000
    _append(path, _rows(range(total)))
    record = corrections.record_lines
    grown: list[int] = []

    def record_then_grow(*args: object) -> int:
        # The writer appends while the run is between two batches, the last line half written.
        if not grown:
            _append(path, _rows(range(total, total + 3)) + _row(total + 3)[:7])
            grown.append(1)
        return record(*args)

    monkeypatch.setattr(corrections, "record_lines", record_then_grow)
    report = tail_flow(TailParameters(grace_seconds=3600))
    assert grown and report.batches >= total // BATCH_ROWS
    assert (report.recorded, report.pending_bytes, report.lag_bytes) == (total + 3, 7, 7)

    _append(path, _row(total + 3)[7:])
    assert tail_flow(TailParameters()).recorded == 1
    assert _ingested(settings) == _names(range(total + 4))

    rows = {row["measure"]: row["value"] for row in _run_artifact()}
    assert (rows["recorded"], rows["lag_bytes"], rows["quarantined"]) == (1, 0, 0)


def _run_artifact() -> list[dict[str, object]]:
    import asyncio

    return asyncio.run(_artifact("tail-corrections"))


@pytest.mark.usefixtures("prefect_server")
def test_flow_rerun_from_offset_and_missing_file(settings: Settings) -> None:
    missing = tail_flow(return_state=True)
    assert missing.is_completed() and missing.message.startswith("nothing new:")
    assert "does not exist yet" in missing.message
    assert _artifacts_of(missing) == []  # a quiet run leaves the Artifacts page as it was

    _append(settings.corrections_path, _rows(range(3)) + b"null\n")
    first = tail_flow()
    assert (first.recorded, first.quarantined) == (3, 1)
    again = tail_flow(TailParameters(from_offset=0))
    assert again.recorded == 3
    assert _ingested(settings) == _names(range(3))
    assert os.path.exists(settings.layout.corrections_quarantine)


def _artifacts_of(state: State) -> list[object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_filter = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
    )
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=run_filter)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("grace_seconds", [3600.0, 0.0])
def test_a_completed_partial_line_is_read_by_the_next_run_every_time(
    settings: Settings, grace_seconds: float
) -> None:
    """Half a row in one cycle, its other half and another row in the next: the run after reads
    both, every time, whether the grace period kept the half waiting (3600 s) or took it at
    once as a row (0 s: quarantined as half a row, then read again whole once it went on)."""
    path = settings.corrections_path
    params = TailParameters(grace_seconds=grace_seconds)
    repetitions = 8
    for n in range(0, 2 * repetitions, 2):
        whole = _row(n)
        cut = 3 + n % 11  # inside the row, at a different place each time
        _append(path, whole[:cut])
        first = tail_flow(params)
        assert first.recorded == 0, n
        _append(path, whole[cut:] + _row(n + 1))
        second = tail_flow(params)
        assert (second.recorded, second.lag_bytes, second.pending_bytes) == (2, 0, 0), n
    assert _ingested(settings) == _names(range(2 * repetitions))
    halves = [entry["offset"] for entry in _quarantined(settings)]
    assert len(halves) == (repetitions if grace_seconds == 0 else 0)


def test_a_line_taken_after_its_grace_that_goes_on_is_read_again_whole(settings: Settings) -> None:
    path = settings.corrections_path
    whole = _row(0)
    _append(path, whole[:12])
    assert tail_corrections(settings, grace_seconds=60, now=1000.0).recorded == 0
    taken = tail_corrections(settings, grace_seconds=60, now=1060.0)
    assert (taken.recorded, taken.quarantined) == (0, 1)  # half a row: quarantined
    _append(path, whole[12:] + _row(1))
    again = tail_corrections(settings, grace_seconds=60, now=1070.0)
    assert (again.recorded, again.quarantined) == (2, 0)
    assert any("went on: reading it again whole" in event for event in again.events)
    assert _ingested(settings) == _names(range(2))
