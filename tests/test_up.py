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


def test_stopping_waits_for_a_flow_run_the_worker_leaves_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    port = free_port()
    up = ObserverUp(tmp_path, QUIET, "--prefect-port", str(port))
    try:
        up.wait_up()
        # Records in the spool (through the library door, which wakes no run), then an ingestion
        # run that drains them and keeps watching the spool for 12 s, longer than the worker
        # takes to stop.
        settings = load_settings(data_dir=up.data_dir)
        record_ops(settings, [(None, sample_op())])
        before = set(descendants(up.process.pid))
        run_deployment(
            f"http://127.0.0.1:{port}/api",
            "ingest-events",
            "ingest-events",
            {"params": {"reason": "manual", "linger_seconds": 12}},
        )
        deadline = time.monotonic() + 60
        runs: list[int] = []
        while not runs and time.monotonic() < deadline:
            runs = [pid for pid in descendants(up.process.pid) if pid not in before]
            time.sleep(0.1)
        assert runs, "no flow run process started"
        everything = descendants(up.process.pid)

        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=90) == 0
        # Gone when `observer up` returns: the run was waited for (it is this process's to wait
        # for once its worker is gone), not left retrying to report to a stopped server.
        # (The run outlives its worker in some stops and ends with it in others, before or after
        # its work: seen each way. Either way none may be left.)
        deadline = time.monotonic() + 5  # (left without the wait, a run went on for a minute)
        while (left := [pid for pid in everything if running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, [command_line(pid) for pid in left if running(pid)]
    finally:
        up.stop()


def test_ctrl_c_during_a_run_retrying_a_hanging_gateway_ends_it_within_the_stop(
    tmp_path: Path,
) -> None:
    """A run made by hand posts to a gateway that takes the connection and never answers (each
    attempt a 30 s timeout, three attempts, three tries of the task: minutes); Ctrl-C stops it
    with everything else, and nothing is left when `observer up` returns."""
    gateway = FakeUpstream()
    gateway.default("/log", Hang(seconds=600))
    port = free_port()
    env = {
        "OBSERVER_CYCLE": A_YEAR,
        "OBSERVER_HISTORY_COMPACT_SECONDS": A_YEAR,
        "OBSERVER_OUTCOMES_SECONDS": A_YEAR,
        "GATEWAY_URL": gateway.url,
        "LAKEHOUSE_URL": "http://127.0.0.1:9",
    }
    up = ObserverUp(tmp_path, env, "--prefect-port", str(port))
    try:
        up.wait_up()
        failure = {"success": False, "error": "staffer 7 not found"}
        assert httpx.post(f"{up.url}/event", json=failure).status_code == 200
        deadline = time.monotonic() + 120  # ingested (the webhook wakes ingestion)
        while not up.ops_path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        before = set(descendants(up.process.pid))
        run_deployment(f"http://127.0.0.1:{port}/api", "analyze-errors", "analyze-errors", {})
        deadline = time.monotonic() + 120
        while not gateway.seen("/log") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gateway.seen("/log"), "the run never posted"
        runs = [pid for pid in descendants(up.process.pid) if pid not in before]
        assert runs
        everything = descendants(up.process.pid)

        stopped_at = time.monotonic()
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(timeout=120) == 0
        took = time.monotonic() - stopped_at
        left = [pid for pid in everything if running(pid)]
        assert not left, [command_line(pid) for pid in left]
        print(f"observer up stopped {took:.1f} s after Ctrl-C, a run retrying the gateway with it")
    finally:
        up.stop()
        gateway.close()
