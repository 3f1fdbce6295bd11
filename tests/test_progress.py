"""The progress tracker (a fake clock), and the two pipelines that report through it (real files:
the spool drain and the corrections read)."""

from __future__ import annotations

import itertools
import json

import pytest

from observer.intake import record_lines
from observer.ops import Op
from observer.pipelines.corrections import tail_corrections
from observer.pipelines.ingest import drain_spool
from observer.progress import Progress, ProgressUpdate
from observer.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracked(total: int, **options: float) -> tuple[Progress, list[ProgressUpdate], Clock]:
    clock, updates = Clock(), []
    progress = Progress("drain", total, updates.append, clock=clock, **options)
    return progress, updates, clock


def test_reports_start_then_at_most_every_2_s_and_1_percent_then_the_end() -> None:
    progress, updates, clock = tracked(1_000_000)
    for step in range(1, 1001):  # 100 s, 0.1 % every 0.1 s
        clock.now += 0.1
        progress.update(step * 1000)
    progress.finish()
    assert updates[0].done == 0 and updates[0].percent == 0 and not updates[0].final
    assert updates[-1].final and updates[-1].percent == 100
    middle = updates[1:-1]
    assert 40 <= len(middle) <= 50  # every 2 s (each time well over 1 % more)
    gaps = [b.elapsed - a.elapsed for a, b in itertools.pairwise(updates[:-1])]
    assert min(gaps) >= 2.0 - 1e-9


def test_a_fast_run_reports_per_percent_at_most_and_a_slow_one_every_30_s() -> None:
    fast, fast_updates, clock = tracked(100, every_seconds=0.0)
    for done in range(0, 101):
        clock.now += 0.001
        fast.update(done)
        fast.update(done)  # no new progress: nothing to say
    fast.finish()
    assert len(fast_updates) == 1 + 99 + 1  # the start, each 1 % on the way, the end
    assert [u.final for u in fast_updates].count(True) == 1
    slow, slow_updates, clock = tracked(1_000_000)
    for second in range(1, 121):  # 0.01 % a second: below 1 % every 2 s
        clock.now += 1
        slow.update(second * 100)
    assert [round(u.elapsed) for u in slow_updates] == [0, 30, 60, 90, 120]


def test_a_report_says_how_far_the_rate_and_the_time_left() -> None:
    progress, updates, clock = tracked(240 * 2**20)
    clock.now += 3
    progress.update(96 * 2**20, note="410,000 op(s)")
    clock.now += 4
    progress.update(240 * 2**20)
    progress.finish()
    assert updates[0].line() == "drain: 0 B of 240 MB (0.0%)"
    assert (
        updates[1].line()
        == "drain: 96 MB of 240 MB (40.0%), 32 MB/s, about 4 s left; 410,000 op(s)"
    )
    assert updates[1].seconds_left == pytest.approx(4.5)
    assert updates[-1].line().startswith("drain: 240 MB of 240 MB (100.0%), 34 MB/s, done in 7 s")


def test_a_growing_total_and_a_small_one() -> None:
    progress, updates, _ = tracked(100, every_seconds=0)
    progress.update(150)  # more arrived than was counted at the start
    progress.finish()
    assert progress.total == 150 and updates[-1].percent == 100
    quiet = Progress.maybe("small", 10, updates.append, above=11)
    quiet.update(10)
    quiet.finish()
    assert not quiet.reporting and len(updates) == 2
    assert ProgressUpdate("x", 0, 0, "rows", 0.0).percent == 100


def _op(n: int) -> bytes:
    return Op(
        timestamp="2026-12-01T10:00:00.000Z",
        endpoint="scenario:fill",
        input_summary=f"op {n} " + "x" * 200,
        success=True,
        duration_ms=n,
        output_summary="ok",
    ).to_line()


def test_the_spool_drain_reports_each_batch_up_to_everything_it_moved(settings: Settings) -> None:
    record_lines(settings, [(None, _op(n)) for n in range(5000)])
    updates: list[ProgressUpdate] = []
    report = drain_spool(
        settings, batch_bytes=64 * 1024, on_progress=updates.append, progress_above=0
    )
    assert report.batches > 10 and updates[0].percent == 0
    assert updates[-1].final and updates[-1].done == report.bytes_read == updates[-1].total
    assert updates[-1].note == "5000 op(s) ingested"
    assert [u.done for u in updates] == sorted(u.done for u in updates)
    quiet: list[ProgressUpdate] = []
    record_lines(settings, [(None, _op(1))])
    drain_spool(settings, on_progress=quiet.append)  # far below the threshold: silent
    assert quiet == []


def test_a_corrections_re_read_reports_its_bytes_and_rows(settings: Settings) -> None:
    path = settings.corrections_path
    path.parent.mkdir(parents=True)
    rows = b"".join(
        json.dumps({"correction": f"c{n} " + "y" * 300}).encode() + b"\n" for n in range(12_000)
    )
    path.write_bytes(rows)
    assert tail_corrections(settings).recorded == 12_000  # below the threshold: no progress
    updates: list[ProgressUpdate] = []
    again = tail_corrections(
        settings, from_offset=0, on_progress=updates.append, progress_above=len(rows)
    )
    assert again.rows_read == 12_000
    assert (updates[0].percent, updates[0].total) == (0, len(rows))
    assert updates[-1].final and updates[-1].done == len(rows) and updates[-1].percent == 100
    assert updates[-1].note == "12000 row(s)"
