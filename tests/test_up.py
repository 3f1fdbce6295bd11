"""`observer up` once everything answers: the same process, now the light console on the standard
library alone, keeping the children; a child that dies is said, with its log, and stops the
rest (exit 1)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from observer.cli.console import descendants, running
from observer.intake.record import record_ops
from observer.settings import load_settings
from tests.fakes import FakeUpstream, Hang
from tests.product import ObserverUp, command_line, free_port, run_deployment, sample_op

A_YEAR = str(365 * 24 * 3600)
#: Schedules that never come due during a test: only the runs a test makes run.
QUIET = {
    "OBSERVER_CYCLE": A_YEAR,
    "OBSERVER_HISTORY_COMPACT_SECONDS": A_YEAR,
    "OBSERVER_OUTCOMES_SECONDS": A_YEAR,
}
#: Each test starts the whole product, whose start alone `ObserverUp.wait_up` allows 300 s (on a
#: loaded 2-core machine it took over the suite's default 120 s for the whole test).
pytestmark = pytest.mark.timeout(480)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[ObserverUp]:
    product = ObserverUp(tmp_path, QUIET, "--prefect-port", str(free_port()))
    yield product
    product.stop()


def test_observer_up_keeps_its_children_as_a_light_console_and_stops_them_when_one_dies(
    up: ObserverUp,
) -> None:
    up.wait_up()
    deadline = time.monotonic() + 10
    while "console.py" not in command_line(up.process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "-I -S" in command_line(up.process.pid) and "console.py" in command_line(up.process.pid)
    assert _rss_mb(up.process.pid) < 30  # the start-up's imports are gone with the exec
    children = {pid: command_line(pid) for pid in descendants(up.process.pid)}
    (webhook,) = [pid for pid, line in children.items() if "observer.cli webhook" in line]
    worker = [pid for pid, line in children.items() if "observer.worker.boot" in line]
    assert worker

    os.kill(webhook, signal.SIGKILL)
    assert up.process.wait(timeout=60) == 1
    log = up.log()
    assert "webhook stopped unexpectedly; the end of its log" in log
    assert "stopping prefect worker" in log and "stopping prefect server" in log
    deadline = time.monotonic() + 15
    while (left := [pid for pid in children if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [children[pid] for pid in left]


def test_stopping_waits_for_the_flow_runs_the_worker_leaves_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    """Ctrl-C while two runs go on: an ingestion watching the spool for 12 s (longer than the
    worker takes to stop), and an analysis whose post goes to a gateway that takes the connection
    and never answers (each attempt a 30 s timeout, three attempts, three tries of the task:
    minutes). Both end with everything else, and nothing is left when `observer up` returns."""
    gateway = FakeUpstream()
    gateway.default("/log", Hang(seconds=600))
    port = free_port()
    env = {**QUIET, "GATEWAY_URL": gateway.url, "LAKEHOUSE_URL": "http://127.0.0.1:9"}
    up = ObserverUp(tmp_path, env, "--prefect-port", str(port))
    api = f"http://127.0.0.1:{port}/api"
    try:
        up.wait_up()
        failure = {"success": False, "error": "staffer 7 not found"}
        assert httpx.post(f"{up.url}/event", json=failure).status_code == 200
        up.wait_for_op("staffer 7 not found", timeout=120)  # the webhook woke ingestion
        before = set(descendants(up.process.pid))
        run_deployment(api, "analyze-errors", "analyze-errors", {})
        deadline = time.monotonic() + 120
        while not gateway.seen("/log") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gateway.seen("/log"), "the analysis never posted"
        # Records in the spool (through the library door, which wakes no run), then an ingestion
        # run that drains them and lingers.
        record_ops(load_settings(data_dir=up.data_dir), [(None, sample_op())])
        run_deployment(
            api,
            "ingest-events",
            "ingest-events",
            {"params": {"reason": "manual", "linger_seconds": 12}},
        )
        deadline = time.monotonic() + 60
        runs: list[int] = []
        while len(runs) < 2 and time.monotonic() < deadline:
            runs = [pid for pid in descendants(up.process.pid) if pid not in before]
            time.sleep(0.1)
        assert len(runs) >= 2, "the two flow runs' processes did not both start"
        everything = descendants(up.process.pid)

        stopped_at = time.monotonic()
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=120) == 0
        took = time.monotonic() - stopped_at
        # Gone when `observer up` returns: the runs were waited for (they are this process's to
        # wait for once its worker is gone), not left retrying to report to a stopped server.
        # (A run outlives its worker in some stops and ends with it in others, before or after
        # its work: seen each way. Either way none may be left.)
        deadline = time.monotonic() + 5  # (left without the wait, a run went on for a minute)
        while (left := [pid for pid in everything if running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, [command_line(pid) for pid in left if running(pid)]
        print(f"observer up stopped {took:.1f} s after Ctrl-C, two runs with it")
    finally:
        up.stop()
        gateway.close()
