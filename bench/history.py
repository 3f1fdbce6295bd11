"""history: a manual `since_hours=24` analysis over days of history, against the same analysis of
the same ops in one ops.jsonl; the table's size; the backfill's CPU and memory.

`python -m bench history` builds 10 and 30 days at 100k ops a day (`--quick`: 3 and 6 days at 20k).
For each length, two data dirs hold the same ops:

- *one file*: `OBSERVER_HISTORY=off`, one ops.jsonl, as before the table (the baseline);
- *history*: the same ops.jsonl adopted by ingestion, then the first compact-history run, the
  backfill: sealed, committed in commits of 8 MiB, the closed days compacted. The run is a child
  process, so its CPU time and peak memory are its own (`os.wait4`).

Measured in the same invocation, medians of RUNS each: `analysis.select` with `since_hours=24`
(read, parse, group) on both; the backfill's CPU-s per 100k ops, beside the stack's ceiling (polars
alone parsing the same file into the typed columns and writing them as zstd Parquet: no Delta, no
line kept, streaming, all cores); its peak RSS, with 8 MiB commits and with a 256 MiB segment
committed whole; the table's bytes against the JSONL's. Targets: the
history ≥ 20× faster than one file at the longest history, its time at the longest ≤ 1.5× its
time at the shortest, table ≤ 20% of the JSONL, backfill ≤ 1 CPU-s per 100k ops, memory bounded
by a commit, not by the history.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from bench.common import Figure, ratio_line
from observer.history.table import HistoryTable
from observer.pipelines import analysis
from observer.pipelines.analysis import AnalyzeParameters
from observer.pipelines.history import DEFAULT_COMMIT_BYTES
from observer.pipelines.ingest import drain_spool
from observer.settings import Settings, load_settings

RUNS = 5
FIRST_DAY = date(2026, 11, 1)
TARGET_SPEEDUP = 20.0
TARGET_FLAT = 1.5
TARGET_BYTES = 0.20
TARGET_CPU_PER_100K = 1.0
ROOT = Path(__file__).resolve().parent.parent

COMPACT_CHILD = """
import sys
from tests.history_streams import compact
from observer.settings import load_settings
if int(sys.argv[1]):
    compact(load_settings(), max_commit_bytes=int(sys.argv[1]))
"""

#: The ceiling: the same ops parsed and written by polars alone (argv: JSONL, Parquet, 0 = imports only).
CEILING_CHILD = """
import sys
import polars as pl
from observer.history.schema import OP_COLUMNS
if int(sys.argv[3]):
    pl.scan_ndjson(sys.argv[1], schema=OP_COLUMNS).sink_parquet(
        sys.argv[2], compression="zstd", compression_level=1
    )
"""

ENDPOINTS = ("scenario:fill", "scenario:rescue", "/query", "/ai/generate", "staffing.fill")
ERRORS = (
    "staffer st-{n} not found in shard {s}",
    "timeout after {n} ms calling the lakehouse",
    "upstream 503 from http://10.0.0.{s}/gateway",
    "role {s} has no open shifts in {n}",
)


def day_lines(day: date, count: int, rng: random.Random) -> bytes:
    """`count` op lines on `day`, in time order, about 5% failures (ops.jsonl's own format)."""
    lines = []
    stamp = day.isoformat()
    for n in range(count):
        second = n * 86_399 // count
        ok = rng.random() >= 0.05
        endpoint = ENDPOINTS[n % len(ENDPOINTS)]
        error = ERRORS[n % len(ERRORS)].format(n=rng.randrange(10_000), s=n % 13)
        tail = (
            '"output_summary":"filled","source":"scenario"'
            if ok
            else f'"output_summary":"{error}","error":"{error}","source":"scenario"'
        )
        lines.append(
            f'{{"timestamp":"{stamp}T{second // 3600:02d}:{second // 60 % 60:02d}:'
            f'{second % 60:02d}.{n % 1000:03d}Z","endpoint":"{endpoint}",'
            f'"input_summary":"fill welder×{n % 9} in Austin, TX","success":{str(ok).lower()},'
            f'"duration_ms":{rng.randrange(1, 3000)},{tail},"staffer_id":"st-{n % 9973}",'
            f'"event_kind":"fill","role":"welder","city":"Austin","state":"TX","count":{n % 9},'
            f'"rescue_attempted":false,"rescue_succeeded":false}}\n'
        )
    return "".join(lines).encode()


@dataclass
class Pair:
    """The same ops, as one file and as a history table."""

    days: int
    jsonl_bytes: int
    ops: int
    whole: Settings
    history: Settings
    backfill_cpu: float
    backfill_peak_mb: float

    @property
    def now(self) -> datetime:
        return datetime.combine(FIRST_DAY + timedelta(days=self.days), datetime.min.time(), UTC)


def build(days: int, per_day: int, workdir: Path, commit_bytes: int) -> Pair:
    whole = load_settings(data_dir=workdir / f"whole-{days}", history="off")
    history = load_settings(data_dir=workdir / f"history-{days}")
    rng = random.Random(days)
    for settings in (whole, history):
        settings.layout.observer_dir.mkdir(parents=True, exist_ok=True)
    with (
        open(whole.layout.ops_path, "wb") as one,
        open(history.layout.ops_path, "wb") as other,
    ):
        for offset in range(days):
            block = day_lines(FIRST_DAY + timedelta(days=offset), per_day, rng)
            one.write(block)
            other.write(block)
    drain_spool(whole)  # adopts the file as it is, as an upgrade does
    drain_spool(history)
    cpu, peak = compact_in_child(history, commit_bytes)
    return Pair(
        days=days,
        jsonl_bytes=whole.layout.ops_path.stat().st_size,
        ops=days * per_day,
        whole=whole,
        history=history,
        backfill_cpu=cpu,
        backfill_peak_mb=peak,
    )


def compact_in_child(settings: Settings, commit_bytes: int) -> tuple[float, float]:
    """One compact-history run (seal, commit, upkeep) in a process of its own: its CPU seconds
    and peak resident memory in MB."""
    env = {**os.environ, "OBSERVER_DATA_DIR": str(settings.data_dir)}
    env.pop("OBSERVER_HISTORY", None)
    return _child_usage(env, COMPACT_CHILD, str(commit_bytes))


def ceiling_cpu(jsonl: Path, workdir: Path) -> float:
    """CPU seconds of polars alone parsing `jsonl` into the typed columns and writing them as
    zstd Parquet, net of the child's imports."""
    out = str(workdir / "ceiling.parquet")
    imports, _ = _child_usage(dict(os.environ), CEILING_CHILD, str(jsonl), out, "0")
    whole, _ = _child_usage(dict(os.environ), CEILING_CHILD, str(jsonl), out, "1")
    return whole - imports


def _child_usage(env: dict[str, str], script: str, *args: str) -> tuple[float, float]:
    process = subprocess.Popen([sys.executable, "-c", script, *args], env=env, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"the child process failed ({status})")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def analysis_time(settings: Settings, now: datetime) -> tuple[float, int]:
    import time

    started = time.perf_counter()
    selection = analysis.select(settings, AnalyzeParameters(since_hours=24), now=now)
    return time.perf_counter() - started, selection.failures


def table_bytes(settings: Settings) -> int:
    history = HistoryTable(settings)
    table = history.open()
    assert table is not None
    return sum(day.bytes for day in history.days(table))


def main(options: list[str]) -> int:
    quick = "--quick" in options
    lengths, per_day = ((3, 6), 20_000) if quick else ((10, 30), 100_000)
    commit_bytes = DEFAULT_COMMIT_BYTES
    workdir = Path(tempfile.mkdtemp(prefix="observer-bench-history-"))
    try:
        pairs = [build(days, per_day, workdir, commit_bytes) for days in lengths]
        segment = build_segment(workdir, 256 * 1024 * 1024 if not quick else 32 * 1024 * 1024)
        startup_cpu, startup_peak = compact_in_child(pairs[0].history, 0)
        os.sync()
        figures: dict[tuple[int, str], Figure] = {}
        for pair in pairs:
            for kind in ("one file", "history"):
                figures[pair.days, kind] = Figure(
                    f"since_hours=24 analysis, {pair.days} days, {kind}", [], "s"
                )
        failures = {}
        for _ in range(RUNS):  # interleaved, so disk and CPU noise hit both alike
            for pair in pairs:
                for kind, settings in (("one file", pair.whole), ("history", pair.history)):
                    seconds, found = analysis_time(settings, pair.now)
                    figures[pair.days, kind].values.append(seconds)
                    failures[pair.days, kind] = found
        for figure in figures.values():
            print(figure.line(), flush=True)
        print()
        ok = True
        for pair in pairs:
            same = failures[pair.days, "one file"] == failures[pair.days, "history"]
            print(
                f"{pair.days} days: {failures[pair.days, 'history']} failures found in the last 24 h"
                f" by both: {same}"
            )
            ok &= same
        longest, shortest = pairs[-1], pairs[0]
        speedup = _ratio(
            f"{longest.days} days: one file / history",
            figures[longest.days, "one file"],
            figures[longest.days, "history"],
            f"≥ {TARGET_SPEEDUP:g}",
        )
        flat = _ratio(
            f"history: {longest.days} days / {shortest.days} days",
            figures[longest.days, "history"],
            figures[shortest.days, "history"],
            f"≤ {TARGET_FLAT:g}",
        )
        ok &= speedup >= TARGET_SPEEDUP and flat <= TARGET_FLAT
        print(
            f"baseline: the same child process without the run (its imports):"
            f" {startup_cpu:.2f} CPU-s, peak RSS {startup_peak:.0f} MB"
        )
        for pair in pairs:
            share = table_bytes(pair.history) / pair.jsonl_bytes
            cpu = pair.backfill_cpu / (pair.ops / 100_000)
            net = (pair.backfill_cpu - startup_cpu) / (pair.ops / 100_000)
            ceiling = ceiling_cpu(pair.whole.layout.ops_path, workdir) / (pair.ops / 100_000)
            print(
                f"{pair.days} days: table {table_bytes(pair.history):,} B = {share:.1%} of the"
                f" JSONL's {pair.jsonl_bytes:,} B (target ≤ {TARGET_BYTES:.0%}); backfill"
                f" {pair.backfill_cpu:.1f} CPU-s = {cpu:.2f} CPU-s per 100k ops, {net:.2f} net of"
                f" the child's imports (target ≤ {TARGET_CPU_PER_100K:g}); peak RSS"
                f" {pair.backfill_peak_mb:.0f} MB with {commit_bytes >> 20} MiB commits; the"
                f" ceiling (polars alone: parse, typed columns, zstd Parquet) {ceiling:.2f} CPU-s"
                f" per 100k ops, backfill / ceiling {net / ceiling:.2f}"
            )
            ok &= share <= TARGET_BYTES and net <= TARGET_CPU_PER_100K
        size, cpu, peak = segment
        print(
            f"one {size >> 20} MiB segment committed whole: peak RSS {peak:.0f} MB, {cpu:.1f} CPU-s"
        )
        print("targets met" if ok else "TARGET MISSED")
        return 0 if ok else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _ratio(label: str, over: Figure, under: Figure, target: str) -> float:
    """Print the ratio of two figures' medians with its target; return it."""
    print(ratio_line(label, over, under) + f"  (target {target})")
    return over.median / under.median


def build_segment(workdir: Path, size: int) -> tuple[int, float, float]:
    """An ops.jsonl of about `size` bytes, sealed and committed in one commit: the peak memory of
    committing a whole segment of OBSERVER_HOT_MAX_BYTES."""
    settings = load_settings(data_dir=workdir / "segment")
    settings.layout.observer_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    written = 0
    with open(settings.layout.ops_path, "wb") as handle:
        day = FIRST_DAY
        while written < size:
            block = day_lines(day, 20_000, rng)
            handle.write(block)
            written += len(block)
            day += timedelta(days=1)
    drain_spool(settings)
    cpu, peak = compact_in_child(settings, written + 1)
    return written, cpu, peak
