"""Ingestion lag: from the webhook's acknowledgement to the op's line in ops.jsonl, end to end.

Starts the whole product (`observer up`: Prefect server, worker, deployments, webhook; the
defaults, OBSERVER_CYCLE=30) on a temp data dir and free ports, lets it settle, then measures:

- single events on the idle product, 20 of them a few seconds apart (each one wakes the ingestion
  deployment through its trigger);
- a constant load of 1,000 events/s for 60 s (paced by 16 concurrent clients), and the number of
  ingest-events runs created during it (one run drains what waits, at most one more waits behind).

Lag is the time from the 200 answer to the moment a poller (every 20 ms) sees the line. The
baseline in the same run is the bare cost of a Python process that imports prefect, which every
run of Prefect's process worker paid twice. `--quick`: 10 single events and 15 s of load;
`--worker=process` measures the product with Prefect's process worker instead (the product before).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.common import Figure, ratio_line, repeat, stopwatch
from bench.procs import Running, flow_runs, product

RATE = 1000.0
CLIENTS = 16


class OpsWatcher:
    """Polls ops.jsonl every 20 ms and notes when each marker first appears."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, float] = {}
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.path.exists():
                with open(self.path, "rb") as handle:
                    handle.seek(self._offset)
                    data = handle.read()
                now = time.monotonic()
                cut = data.rfind(b"\n") + 1
                self._offset += cut
                for line in data[:cut].splitlines():
                    marker = line.split(b'"input_summary":"', 1)[-1].split(b'"', 1)[0]
                    self.seen.setdefault(marker.decode(), now)
            self._stop.wait(0.02)

    def wait_for(self, markers: set[str], timeout: float) -> set[str]:
        """Wait until every marker was seen; return those still missing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not markers <= self.seen.keys():
            time.sleep(0.2)
        return markers - self.seen.keys()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(options: list[str]) -> int:
    quick = "--quick" in options
    worker = next((o.split("=", 1)[1] for o in options if o.startswith("--worker=")), "warm")
    singles, load_seconds = (10, 15.0) if quick else (20, 60.0)
    with product(worker=worker) as running:
        time.sleep(30 if quick else 60)  # deployment, first scheduled runs
        watcher = OpsWatcher(running.ops_path)
        try:
            acked: dict[str, float] = {}
            with httpx.Client() as client:
                for n in range(singles):
                    _post(client, running, f"single-{n}", acked)
                    time.sleep(3)
            single_missing = watcher.wait_for(set(acked), 60)
            load_started = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
            loaded = asyncio.run(_load(running, load_seconds))
            load_ended = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
            load_missing = watcher.wait_for(set(loaded), 180)
        finally:
            watcher.stop()
        created = flow_runs(
            running.api,
            {
                "deployments": {"name": {"any_": ["ingest-events"]}},
                "flow_runs": {
                    "expected_start_time": {"after_": load_started, "before_": load_ended}
                },
            },
        )
    print(f"worker: {worker}")
    single_lags = _report("single events, idle product", acked, watcher.seen)
    load_lags = _report(f"{RATE:.0f} events/s for {load_seconds:.0f} s", loaded, watcher.seen)
    print(f"ingest-events runs created during the load: {len(created)} for {len(loaded)} events")
    if load_lags:
        print(f"load p99 / target 3 s: {percentile(load_lags, 0.99) / 3:.2f}")
    missing = single_missing | load_missing
    if missing:
        print(f"NOT SEEN: {len(missing)} event(s)")
    baseline = repeat(
        "python -c 'import prefect' (a process-worker run paid 2)",
        3,
        lambda: stopwatch(
            lambda: subprocess.run([sys.executable, "-c", "import prefect"], check=True)
        ),
    )
    print(baseline.line())
    if single_lags:
        print(
            ratio_line(
                "single-event lag p50 / prefect import", Figure("lag", single_lags, "s"), baseline
            )
        )
    print("targets: single p50 <= 0.5 s, p99 <= 1.5 s; load p99 <= 3 s. Machine: shared.")
    return 1 if missing else 0


def _report(label: str, acked: dict[str, float], seen: dict[str, float]) -> list[float]:
    lags = [seen[m] - t for m, t in acked.items() if m in seen]
    if lags:
        print(
            f"lag ack -> ops.jsonl, {label:<32} n={len(lags):<6} p50 {statistics.median(lags):6.2f} s"
            f"  p99 {percentile(lags, 0.99):6.2f} s  max {max(lags):6.2f} s"
        )
    return lags


def _post(client: httpx.Client, running: Running, marker: str, acked: dict[str, float]) -> None:
    answer = client.post(
        f"{running.webhook}/event", json={"input_summary": marker, "success": True}
    )
    answer.raise_for_status()
    acked[marker] = time.monotonic()


async def _load(running: Running, seconds: float) -> dict[str, float]:
    """RATE events/s for `seconds`: event k is sent at start + k / RATE by one of CLIENTS clients."""
    acked: dict[str, float] = {}
    total = int(RATE * seconds)
    next_index = 0
    started = time.monotonic() + 0.5

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < total:
            k = next_index
            next_index += 1
            delay = started + k / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            marker = f"load-{k}"
            body = {"input_summary": marker, "success": True}
            answer = await client.post(f"{running.webhook}/event", json=body)
            if answer.status_code == 200:
                acked[marker] = time.monotonic()

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
    return acked
