"""Ingestion lag: from the webhook's acknowledgement to the op's line in ops.jsonl, end to end.

Starts the whole product (`observer up`: Prefect server, worker, deployments, webhook) on a temp
data dir and free ports, then measures two patterns: single events a few seconds apart (each one
wakes the ingestion deployment through its trigger) and a burst (one run drains many). Lag is the
time from the 200 answer to the moment a poller sees the line in ops.jsonl. The baseline in the
same run is the bare cost of a Python process that imports prefect, which every flow run pays.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import Figure, ratio_line, repeat, stopwatch

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(options: list[str]) -> int:
    quick = "--quick" in options
    workdir = Path(tempfile.mkdtemp(prefix="observer-lag-"))
    web_port, prefect_port = free_port(), free_port()
    env = {
        **os.environ,
        "OBSERVER_DATA_DIR": str(workdir / "data"),
        "OBSERVER_PORT": str(web_port),
        "OBSERVER_CYCLE": "30",
        "OBSERVER_PROJECT_DIR": str(ROOT),
    }
    log = open(workdir / "up.log", "wb")  # noqa: SIM115 - closed in finally
    up = subprocess.Popen(
        [sys.executable, "-m", "observer.cli", "up", "--prefect-port", str(prefect_port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    url = f"http://127.0.0.1:{web_port}"
    try:
        _wait_until_up(url, up)
        time.sleep(5)  # let the first scheduled runs pass
        watcher = OpsWatcher(workdir / "data" / "_observer" / "ops.jsonl")
        acked: dict[str, float] = {}
        with httpx.Client() as client:
            singles = 5 if quick else 12
            for n in range(singles):
                _post(client, url, f"single-{n}", acked)
                time.sleep(6)
            for n in range(200 if quick else 1000):
                _post(client, url, f"burst-{n}", acked)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(watcher.seen) < len(acked):
            time.sleep(0.2)
        watcher.stop()
        missing = set(acked) - set(watcher.seen)
        for pattern in ("single", "burst"):
            lags = [
                watcher.seen[m] - t
                for m, t in acked.items()
                if m.startswith(pattern) and m in watcher.seen
            ]
            if lags:
                print(
                    f"lag ack → ops.jsonl, {pattern:<6} events: n={len(lags)}"
                    f"  p50 {statistics.median(lags):.2f} s  p99 {percentile(lags, 0.99):.2f} s"
                    f"  max {max(lags):.2f} s"
                )
        if missing:
            print(f"NOT SEEN within 120 s: {len(missing)} event(s)")
        baseline = repeat(
            "python -c 'import prefect' (every flow run pays it)",
            3,
            lambda: stopwatch(
                lambda: subprocess.run([sys.executable, "-c", "import prefect"], check=True)
            ),
        )
        single_lags = [
            watcher.seen[m] - t
            for m, t in acked.items()
            if m.startswith("single") and m in watcher.seen
        ]
        print(baseline.line())
        if single_lags:
            print(
                ratio_line(
                    "single-event lag p50 / prefect import",
                    Figure("lag", single_lags, "s"),
                    baseline,
                )
            )
        return 1 if missing else 0
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _post(client: httpx.Client, url: str, marker: str, acked: dict[str, float]) -> None:
    answer = client.post(f"{url}/event", json={"input_summary": marker, "success": True})
    answer.raise_for_status()
    acked[marker] = time.monotonic()


def _wait_until_up(url: str, up: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise RuntimeError("observer up exited during start-up")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("observer up did not start within 240 s")
