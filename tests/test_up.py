"""`observer up` once everything answers: the same process, now the light console on the standard
library alone, keeping the children; a child that dies is said, with its log, and stops the
rest (exit 1)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.product import ObserverUp, command_line, descendants, free_port

A_YEAR = str(365 * 24 * 3600)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[ObserverUp]:
    product = ObserverUp(tmp_path, {"OBSERVER_CYCLE": A_YEAR}, "--prefect-port", str(free_port()))
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
    while (left := [pid for pid in children if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [children[pid] for pid in left]


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
