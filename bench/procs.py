"""What the product-level benchmarks share: start the whole product or a bare Prefect server on a
temp data dir and free ports, and read a process tree's CPU time and memory from /proc.

CPU is summed over the whole tree of the started process (utime + stime of every live process,
plus what each has collected from its reaped children), so runs that came and went in a window are
counted. Memory is the sum of each live process's RSS, and of its PSS (proportional set size:
pages shared between processes, such as the warm template's with the runs it forked, counted
once across them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its reaped children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS


def tree_cpu(root: int) -> float:
    return sum(cpu_seconds(pid) for pid in tree(root))


def memory_mb(root: int) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) of the tree, in MB."""
    rss = pss = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


#: (kind, what its command line holds)
KINDS = (
    ("prefect server", "server start"),
    ("worker", "worker start"),
    ("template", "observer.worker.template"),
    ("webhook", "observer.cli webhook"),
    ("fsync helper", "syncer_child"),
    ("observer up", "observer.cli up"),
    ("observer up", "console.py"),  # the same process once everything started (exec'd)
)


def kind_of(pid: int) -> str:
    """What a process of the product is, from its command line. The worker started through
    `observer.worker.boot` and the template it forked share one command line: the template is
    the one whose parent has it too."""
    command = command_of(pid)
    if "observer.worker.boot" in command:
        return "template" if command_of(parent_of(pid)) == command else "worker"
    return next((kind for kind, marker in KINDS if marker in command), "other")


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def breakdown(root: int) -> dict[str, tuple[float, float]]:
    """CPU seconds and RSS MB per kind of process in the tree (for the report)."""
    result: dict[str, tuple[float, float]] = {}
    for pid in tree(root):
        kind = kind_of(pid)
        rss = 0.0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        cpu, mem = result.get(kind, (0.0, 0.0))
        result[kind] = (cpu + cpu_seconds(pid), mem + rss)
    return result


def database_bytes(prefect_home: Path) -> tuple[int, int]:
    """Bytes in use in a Prefect database: (events, everything else), tables and indexes.

    Prefect's db-vacuum deletes them on two clocks (events after the events retention, runs with
    their states, task runs, logs and artifacts after the flow-run retention), so they are counted
    apart. Read with SQLite's dbstat table."""
    db = prefect_home / "prefect.db"
    query = "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        sizes = conn.execute(query).fetchall()
    events = sum(size for name, size in sizes if "event" in name and "deployment" not in name)
    return events, sum(size for _, size in sizes) - events


@dataclass
class Running:
    """A started product or server: its root pid, URLs and temp directory."""

    process: subprocess.Popen[bytes]
    workdir: Path
    api: str
    webhook: str | None = None
    log: Path = field(default_factory=Path)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def prefect_home(self) -> Path:
        home = self.workdir / "data" / "_prefect"
        return home if home.exists() else self.workdir / "home"

    @property
    def ops_path(self) -> Path:
        return self.workdir / "data" / "_observer" / "ops.jsonl"


@contextlib.contextmanager
def product(worker: str = "warm", cycle: str = "30") -> Iterator[Running]:
    """The whole product as `make up` starts it (`observer up`), with its defaults."""
    workdir = Path(tempfile.mkdtemp(prefix="observer-bench-"))
    web_port, prefect_port = free_port(), free_port()
    while prefect_port == web_port:
        prefect_port = free_port()
    env = {
        **os.environ,
        "OBSERVER_DATA_DIR": str(workdir / "data"),
        "OBSERVER_PORT": str(web_port),
        "OBSERVER_CYCLE": cycle,
        "OBSERVER_PROJECT_DIR": str(ROOT),
        "OBSERVER_WORKER": worker,
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "observer.cli", "up", "--prefect-port", str(prefect_port)]
    running = _start(command, env, workdir, f"http://127.0.0.1:{prefect_port}/api")
    running.webhook = f"http://127.0.0.1:{web_port}"
    try:
        _wait_for(f"{running.webhook}/health", running, 300)
        _wait_for_worker(running, 120)
        yield running
    finally:
        _stop(running)


@contextlib.contextmanager
def bare_server() -> Iterator[Running]:
    """`prefect server start` alone, with the same database kind and no flows: the baseline."""
    workdir = Path(tempfile.mkdtemp(prefix="observer-bench-bare-"))
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(workdir / "home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    running = _start([*command, "--port", str(port)], env, workdir, f"http://127.0.0.1:{port}/api")
    try:
        _wait_for(f"{running.api}/health", running, 300)
        yield running
    finally:
        _stop(running)


def flow_runs(api: str, body: dict[str, object]) -> list[dict[str, object]]:
    return httpx.post(f"{api}/flow_runs/filter", json={"limit": 200, **body}, timeout=30).json()


def _start(command: list[str], env: dict[str, str], workdir: Path, api: str) -> Running:
    log = workdir / "output.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, process_group=0
        )
    return Running(process, workdir, api, log=log)


def _wait_for(url: str, running: Running, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            tail = running.log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError("exited during start-up:\n" + "\n".join(tail))
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _wait_for_worker(running: Running, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            pools = httpx.post(f"{running.api}/work_pools/filter", json={}, timeout=5).json()
            for pool in pools:
                workers = httpx.post(
                    f"{running.api}/work_pools/{pool['name']}/workers/filter", json={}, timeout=5
                ).json()
                if any(w["status"] == "ONLINE" for w in workers):
                    return
        time.sleep(1)
    raise RuntimeError("no worker came online")


def _stop(running: Running) -> None:
    process = running.process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for pid in _left_behind(running.workdir):  # e.g. a run still going when its worker stopped
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(running.workdir, ignore_errors=True)


def _left_behind(workdir: Path) -> list[int]:
    """Processes started for this benchmark's data dir (their environment names it)."""
    marker = f"OBSERVER_DATA_DIR={workdir / 'data'}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
    return found
