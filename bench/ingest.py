"""Ingestion throughput: how many spooled events per second one ingest-events run moves into
ops.jsonl, the library's work of a flow run without its start-up (`drain_spool`).

The spool is filled through the intake's own bulk door (`record_lines`, what every producer but
the webhook uses) with webhook-sized scenario events, one in ten carrying an `event_id` (the
idempotency path). Each measured run starts from a copy of that spool, with no ops.jsonl and no
checkpoint, and drains all of it: read, parse and de-duplicate with polars, append to ops.jsonl
with fsync, checkpoint, delete the ingested segments.

Baseline, same run, same filesystem: copying the spool's bytes into one file with one fsync (the
I/O floor: ingestion reads and writes about as many bytes). Sizes 100k and 1M events (`--quick`:
100k, one run). Files live in a temporary directory under bench/.ref/ (the repository's
filesystem: fsync on a tmpfs would prove nothing), deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench.common import Figure, ratio_line, repeat, stopwatch
from observer.intake.record import record_lines
from observer.intake.spool import segment_end, segment_records
from observer.ops import Op
from observer.pipelines.ingest import drain_spool
from observer.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
SIZES = (100_000, 1_000_000)
RUNS = 5
BLOCK = 10_000


def _line(n: int) -> bytes:
    return Op(
        timestamp=f"2026-04-23T10:{n // 60 % 60:02d}:{n % 60:02d}.{n % 1000:03d}Z",
        endpoint="scenario:fill",
        input_summary=f"fill welder×{n % 9} in Austin, TX",
        success=n % 20 != 0,
        duration_ms=n % 1500,
        output_summary="filled",
        source="scenario",
        rescue_attempted=False,
        rescue_succeeded=False,
    ).to_line()


def fill_spool(settings: Settings, events: int) -> int:
    """Spool `events` events in blocks; return the spool's size in bytes."""
    for start in range(0, events, BLOCK):
        record_lines(
            settings,
            ((f"ev-{n}" if n % 10 == 0 else None, _line(n)) for n in range(start, start + BLOCK)),
        )
    return sum(segment_end(path) for path in settings.layout.spool_dir.glob("*.jsonl"))


def ingest_once(template: Path, settings: Settings) -> float:
    """Seconds for one run that drains a fresh copy of the template spool."""
    shutil.rmtree(settings.layout.observer_dir, ignore_errors=True)
    shutil.copytree(template, settings.layout.spool_dir)
    ingested: list[int] = []
    seconds = stopwatch(lambda: ingested.append(drain_spool(settings).ingested))
    if not ingested[0]:
        raise RuntimeError("the run ingested nothing")
    return seconds


def copy_once(template: Path, target: Path) -> float:
    """Seconds to copy the spool's bytes into one file and fsync it."""
    target.unlink(missing_ok=True)

    def copy() -> None:
        with open(target, "wb") as out:
            for segment in sorted(template.glob("*.jsonl")):
                out.write(segment_records(segment))
            out.flush()
            os.fsync(out.fileno())

    return stopwatch(copy)


def measure(workdir: Path, events: int, runs: int) -> None:
    source = load_settings(OBSERVER_DATA_DIR=str(workdir / "source"))
    size = fill_spool(source, events)
    template = workdir / "template"
    shutil.rmtree(template, ignore_errors=True)
    shutil.copytree(source.layout.spool_dir, template)
    shutil.rmtree(workdir / "source")
    target = load_settings(OBSERVER_DATA_DIR=str(workdir / "run"))
    megabytes = f"{size / 1e6:.0f} MB"
    ours = repeat(
        f"ingest {events:,} events ({megabytes})", runs, lambda: ingest_once(template, target)
    )
    floor = repeat(
        f"copy + fsync the same {megabytes}", runs, lambda: copy_once(template, workdir / "copy")
    )
    rate = Figure(f"ingest events/s at {events:,}", [events / s for s in ours.values], "ev/s")
    print(ours.line())
    print(rate.line())
    print(floor.line())
    print(ratio_line(f"ingest / copy floor at {events:,}", ours, floor))


def main(options: list[str]) -> int:
    quick = "--quick" in options
    sizes, runs = ((SIZES[0],), 1) if quick else (SIZES, RUNS)
    (REPO / "bench" / ".ref").mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ingest-", dir=REPO / "bench" / ".ref"))
    try:
        for events in sizes:
            measure(workdir, events, runs)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
