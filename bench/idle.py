"""Idle cost of the whole product (`observer up` with its defaults, OBSERVER_CYCLE=30), against a
bare `prefect server start` measured in the same run.

Phases, each on its own temp data dir and free ports:

1. the bare Prefect server, idle: CPU (% of one core) over the window, memory;
2. the product with its warm worker (the default), idle: CPU of the whole process tree, memory
   (RSS and PSS summed over the tree, median and peak of 5 s samples), runs started, and the growth
   of the Prefect database (pages in use) extrapolated to a day; then the same growth with 10
   events/s posted to the webhook;
3. the product with Prefect's process worker (`OBSERVER_WORKER=process`, what the product used
   before), idle, the same figures: the before/after of the same run.

`--minutes=N` sets each window (default 5; `--quick`: 1, settle 30 s); `--no-process` skips phase
3. A start-up settle (60 s) comes before each window, so deploying and the scheduler's first
filling of future runs are not counted.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass

import httpx

from bench.procs import (
    Running,
    bare_server,
    breakdown,
    database_bytes,
    flow_runs,
    memory_mb,
    product,
    tree_cpu,
)
from deployments.apply import EVENT_RETENTION_DAYS, RUN_RETENTION_DAYS

DAY = 86400.0


@dataclass
class Window:
    label: str
    cpu_percent: float
    rss_median: float
    rss_peak: float
    pss_median: float
    pss_peak: float
    runs: int = 0
    db_per_day: tuple[float, float] | None = None  # bytes a day: (events, runs and the rest)
    parts: dict[str, tuple[float, float]] | None = None

    def line(self) -> str:
        text = (
            f"{self.label:<34} CPU {self.cpu_percent:6.2f}% of a core   "
            f"RSS {self.rss_median:6.0f} MB (peak {self.rss_peak:4.0f})   "
            f"PSS {self.pss_median:6.0f} MB (peak {self.pss_peak:4.0f})"
        )
        if self.runs:
            text += f"   {self.runs} runs"
        if self.db_per_day is not None:
            events, rest = self.db_per_day
            text += f"   DB +{events / 1e6:.0f} MB/day events, +{rest / 1e6:.0f} MB/day runs"
        return text


def measure(
    running: Running, label: str, seconds: float, *, events_per_second: float = 0
) -> Window:
    """CPU, memory, runs and database growth of `running` over `seconds`."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    db_before = _used_db(running)
    parts_before = breakdown(running.pid)
    cpu_before, started = tree_cpu(running.pid), time.monotonic()
    stop = threading.Event()
    sender = None
    if events_per_second:
        sender = threading.Thread(target=_post_events, args=(running, events_per_second, stop))
        sender.start()
    rss: list[float] = []
    pss: list[float] = []
    while time.monotonic() - started < seconds:
        r, p = memory_mb(running.pid)
        rss.append(r)
        pss.append(p)
        time.sleep(min(5.0, max(0.0, seconds - (time.monotonic() - started))))
    elapsed = time.monotonic() - started
    cpu = tree_cpu(running.pid) - cpu_before
    stop.set()
    if sender is not None:
        sender.join()
    db_after = _used_db(running)
    parts_after = breakdown(running.pid)
    parts = {
        kind: ((parts_after[kind][0] - parts_before.get(kind, (0.0, 0.0))[0]) / elapsed * 100, mem)
        for kind, (_, mem) in parts_after.items()
    }
    runs = 0
    if running.webhook is not None:
        started_states = ["RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
        query = {"start_time": {"after_": since}, "state": {"type": {"any_": started_states}}}
        runs = len(flow_runs(running.api, {"flow_runs": query}))
    growth = None
    if db_before is not None and db_after is not None:
        growth = (
            (db_after[0] - db_before[0]) / elapsed * DAY,
            (db_after[1] - db_before[1]) / elapsed * DAY,
        )
    return Window(
        label,
        cpu / elapsed * 100,
        statistics.median(rss),
        max(rss),
        statistics.median(pss),
        max(pss),
        runs,
        growth,
        parts,
    )


def main(options: list[str]) -> int:
    quick = "--quick" in options
    minutes = float(_option(options, "--minutes", "1" if quick else "5"))
    window, settle = minutes * 60, 30.0 if quick else 60.0
    results: list[Window] = []

    with bare_server() as server:
        time.sleep(settle)
        results.append(measure(server, "bare prefect server start", window))
        print(results[-1].line(), flush=True)

    kinds = ["warm"] if "--no-process" in options else ["warm", "process"]
    for kind in kinds:
        with product(worker=kind) as running:
            time.sleep(settle)
            idle = measure(running, f"product, {kind} worker, idle", window)
            results.append(idle)
            print(idle.line(), flush=True)
            for part, (cpu, mem) in sorted((idle.parts or {}).items()):
                print(f"    {part:<16} {cpu:6.2f}% CPU  {mem:6.0f} MB RSS at the end")
            if kind == "warm":
                loaded = measure(
                    running, "product, warm, 10 events/s", window, events_per_second=10
                )
                results.append(loaded)
                print(loaded.line(), flush=True)

    bare = results[0]
    print()
    for result in results[1:]:
        print(
            f"{result.label:<34} CPU / bare server: {result.cpu_percent / bare.cpu_percent:5.2f}x"
            f"   (target <= 2x at idle)"
        )
    warm = results[1]
    print(
        f"product memory at idle (warm): RSS {warm.rss_median:.0f} MB, PSS {warm.pss_median:.0f} MB"
        f" (target <= 450 MB; peak RSS {warm.rss_peak:.0f} MB)"
    )
    for result in results[1:]:
        if result.db_per_day is not None:
            events, rest = result.db_per_day
            bound = events * EVENT_RETENTION_DAYS + rest * RUN_RETENTION_DAYS
            print(
                f"database, {result.label}: +{events / 1e6:.0f} MB/day of events (kept"
                f" {EVENT_RETENTION_DAYS} day), +{rest / 1e6:.0f} MB/day of runs (kept"
                f" {RUN_RETENTION_DAYS} days): bounded near {bound / 1e9:.1f} GB"
                f" (extrapolated from {minutes:g} min)"
            )
    print("machine: shared; figures from one run, each window after a settle (see bench/README.md)")
    return 0


def _used_db(running: Running) -> tuple[int, int] | None:
    try:
        return database_bytes(running.prefect_home)
    except sqlite3.Error:
        return None


def _post_events(running: Running, rate: float, stop: threading.Event) -> None:
    assert running.webhook is not None
    with httpx.Client(timeout=10) as client:
        n, started = 0, time.monotonic()
        while not stop.is_set():
            body = {"input_summary": f"load-{n}", "success": n % 7 != 0, "duration_ms": 12}
            client.post(f"{running.webhook}/event", json=body)
            n += 1
            time.sleep(max(0.0, started + n / rate - time.monotonic()))


def _option(options: list[str], name: str, default: str) -> str:
    for option in options:
        if option.startswith(f"{name}="):
            return option.split("=", 1)[1]
    return default
