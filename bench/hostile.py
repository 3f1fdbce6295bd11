"""A normal client's latency and the webhook's memory while another client sends an endless header.

Why it is built this way:
- The same webhook app runs twice in the same run: as Observer serves it (`observer webhook`,
  whose HTTP/1.1 protocol bounds heads, time and connections) and under uvicorn's own httptools
  protocol (`bench/stock_webhook.py`), which is what the webhook was before. Same settings, same
  machine, alternated; nothing else differs.
- Each is measured quiet (the normal client alone) and under attack: a second process sends a
  request whose header never ends, 100 MB per connection as fast as the server reads it,
  reconnecting whenever the server closes the connection, for the whole phase.
- The normal client is the issue's: one keep-alive connection posting a 233-byte scenario event
  every 10 ms, each answer timed (a request waits as long as the server makes it wait). Its p50,
  p99 and worst latency, and how many answers it got, are compared with the same server's quiet
  phase in the same run.
- Memory: the server's VmRSS sampled every 50 ms (from /proc): at the start of the phase, its
  peak, and after. After an attacked phase the run waits until the server answers quickly again
  (a server that buffered the header may still be working through it once the attacker left).

Options: `--quick` (1 run of 4 s phases), `--runs=N`, `--seconds=S` (per phase), `--header-mb=M`
(bytes per hostile connection, default 100).
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import rss_mb

REPO = Path(__file__).resolve().parent.parent
WORK_DIR = REPO / "bench" / ".ref"  # gitignored: the runs' temp dirs
EVENT = (
    b'{"staffer_id":"st-0042","sig_hash":"9f1c2e7a4b5d6e8f","event_kind":"fill","role":"welder",'
    b'"city":"Toledo","state":"OH","count":3,"success":true,"duration_ms":1234,'
    b'"rescue_attempted":false,"rescue_succeeded":false,"source":"scenario"}'
)
INTERVAL_S = 0.010  # the normal client's pace
CHUNK = b"a" * 65536
TARGET_P99_MS = 50.0  # the issue's: a normal client's p99 while one client sends a 100 MB header
SERVERS = {
    "Observer": ["-m", "observer.cli", "webhook"],
    "before (uvicorn's protocol)": ["-m", "bench.stock_webhook"],
}


@dataclass(frozen=True)
class Plan:
    runs: int
    seconds: float
    header_bytes: int


@dataclass
class Phase:
    """One phase against one server: the normal client's answers, the memory, the attacker's count."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0
    hostile_connections: int = 0
    hostile_mb_sent: float = 0.0
    hostile_431: int = 0

    def percentile(self, share: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# ── entry point ─────────────────────────────────────────────────────────────────────────────────


def main(options: list[str]) -> int:
    plan = parse_options(options)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="hostile-run-", dir=WORK_DIR))
    servers: list[Server] = []
    try:
        for name, arguments in SERVERS.items():
            servers.append(start(name, arguments, scratch))
        return measure(plan, servers)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def parse_options(options: list[str]) -> Plan:
    quick = "--quick" in options
    plan = Plan(runs=1 if quick else 3, seconds=4.0 if quick else 15.0, header_bytes=100 << 20)
    for option in options:
        name, _, value = option.partition("=")
        if name == "--runs" and value.isdigit() and int(value) > 0:
            plan = Plan(int(value), plan.seconds, plan.header_bytes)
        elif name == "--seconds" and value.replace(".", "", 1).isdigit() and float(value) > 0:
            plan = Plan(plan.runs, float(value), plan.header_bytes)
        elif name == "--header-mb" and value.isdigit() and int(value) > 0:
            plan = Plan(plan.runs, plan.seconds, int(value) << 20)
        elif name != "--quick":
            print(f"hostile bench: ignoring option {option!r} (not one of this benchmark's)")
    return plan


def start(name: str, arguments: list[str], scratch: Path) -> Server:
    """A webhook with its default limits on a free loopback port, its own data dir."""
    home = scratch / name.split()[0].lower()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBSERVER_", "PREFECT_"))}
    env |= {
        "OBSERVER_DATA_DIR": str(home / "data"),
        "OBSERVER_HOST": "127.0.0.1",
        "OBSERVER_PORT": "0",
        "GATEWAY_URL": "http://127.0.0.1:9",  # nothing listens: the webhook does not need it
    }
    log_path = home / "stderr.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, *arguments],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode(errors="replace")  # "… listening on http://h:p"
    if "listening on http://" not in line:
        process.kill()
        raise SystemExit(f"hostile bench: {name} did not start: {line!r}\n{log_path.read_text()}")
    threading.Thread(target=process.stdout.read, daemon=True).start()  # keep the pipe drained
    host, port = line.rsplit("//", 1)[1].strip().rsplit(":", 1)
    server = Server(name, process, host, int(port), log_path)
    wait_until_answering(server)
    return server


def wait_until_answering(server: Server) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection(server.host, server.port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                connection.close()
                return
        time.sleep(0.2)
    server.stop()
    raise SystemExit(f"hostile bench: {server.name} never answered /health")


# ── the two clients ─────────────────────────────────────────────────────────────────────────────


def endless_header(
    host: str, port: int, per_connection: int, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    """Runs in its own process until terminated: header bytes, as fast as the server takes them."""
    connections = sent = refused = 0
    last_report = time.monotonic()
    while True:
        connections += 1
        with contextlib.suppress(OSError), socket.create_connection((host, port)) as sock:
            sock.sendall(b"POST /event HTTP/1.1\r\nhost: bench\r\nx-endless: ")
            on_this = 0
            try:
                while on_this < per_connection:
                    sock.sendall(CHUNK)
                    on_this += len(CHUNK)
                    sent += len(CHUNK)
                    if time.monotonic() - last_report > 0.2:
                        results.put((connections, sent, refused))
                        last_report = time.monotonic()
            except OSError:
                pass
            sock.settimeout(0.5)
            with contextlib.suppress(OSError):
                refused += sock.recv(64).startswith(b"HTTP/1.1 431 ")
        results.put((connections, sent, refused))


def normal_client(server: Server, seconds: float, phase: Phase) -> None:
    """One keep-alive connection, one event every 10 ms for `seconds`, each answer timed."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=300)
    headers = {"content-type": "application/json"}
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            connection.request("POST", "/event", body=EVENT, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                phase.errors += 1
                continue
        except (OSError, http.client.HTTPException):
            phase.errors += 1
            connection.close()
            connection = http.client.HTTPConnection(server.host, server.port, timeout=300)
            continue
        phase.latencies_ms.append((time.perf_counter() - started) * 1000)
        next_at += INTERVAL_S
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at, time.monotonic() - INTERVAL_S)  # after a stall, no burst
    connection.close()


class MemorySampler:
    """VmRSS of one process every 50 ms, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return rss_mb(self.pid)


def run_phase(server: Server, plan: Plan, attacked: bool) -> Phase:
    phase = Phase()
    memory = MemorySampler(server.process.pid)
    attacker = None
    results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
    if attacked:
        attacker = multiprocessing.get_context("spawn").Process(
            target=endless_header,
            args=(server.host, server.port, plan.header_bytes, results),
            daemon=True,
        )
        attacker.start()
        time.sleep(0.5)  # let the header start before the normal client does
    try:
        normal_client(server, plan.seconds, phase)
    finally:
        if attacker is not None:
            attacker.terminate()
            attacker.join(timeout=10)
    with contextlib.suppress(queue.Empty):
        while True:
            phase.hostile_connections, sent, phase.hostile_431 = results.get_nowait()
            phase.hostile_mb_sent = sent / 1e6
    phase.rss_start_mb, phase.rss_peak_mb = memory.start, memory.peak
    phase.rss_end_mb = memory.stop()
    if attacked:
        settle(server)
    return phase


def settle(server: Server, seconds: float = 120) -> None:
    """Wait until the server answers quickly again: a server that buffered a huge header may still
    be working through it after the attacker left, which would spoil the next phase."""
    deadline = time.monotonic() + seconds
    quick = 0
    while quick < 3 and time.monotonic() < deadline:
        started = time.perf_counter()
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection(server.host, server.port, timeout=seconds)
            connection.request("GET", "/health")
            connection.getresponse().read()
            connection.close()
        quick = quick + 1 if time.perf_counter() - started < 0.05 else 0
        time.sleep(0.1)


# ── measuring and reporting ─────────────────────────────────────────────────────────────────────


def measure(plan: Plan, servers: list[Server]) -> int:
    print(
        f"normal client: one keep-alive connection, a 233-byte event every {INTERVAL_S * 1000:.0f} ms;"
        f" attacker: one header of {plan.header_bytes >> 20} MB per connection, reconnecting;"
        f" {plan.runs} run(s) x {plan.seconds:g} s per phase; {os.cpu_count()} cores;"
        f" load average now {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    phases: dict[tuple[str, bool], list[Phase]] = {}
    for run in range(plan.runs):
        order = servers if run % 2 == 0 else servers[::-1]
        for server in order:
            for attacked in (False, True):
                phase = run_phase(server, plan, attacked)
                phases.setdefault((server.name, attacked), []).append(phase)
                print(f"  run {run + 1}: {server.name:<28} {row(phase, attacked)}", flush=True)
    print(
        "\nmedians over runs | answers | p50 ms | p99 ms | max ms | errors | RSS start → peak → end MB"
        " | attacker: connections, MB sent (socket buffers included), 431 answers"
    )
    for server in servers:
        for attacked in (False, True):
            runs = phases[(server.name, attacked)]
            label = f"{server.name}, {'endless header' if attacked else 'quiet'}"
            print(f"{label:<44} {median_row(runs, attacked)}")
    return verdict(servers, phases)


def row(phase: Phase, attacked: bool) -> str:
    text = (
        f"{'attacked' if attacked else 'quiet   '} answers {len(phase.latencies_ms):>5}"
        f"  p50 {phase.percentile(0.5):8.2f} ms  p99 {phase.percentile(0.99):9.2f} ms"
        f"  max {max(phase.latencies_ms, default=float('nan')):9.1f} ms  errors {phase.errors}"
        f"  RSS {phase.rss_start_mb:.1f} → {phase.rss_peak_mb:.1f} → {phase.rss_end_mb:.1f} MB"
    )
    if attacked:
        text += (
            f"  attacker: {phase.hostile_connections} connections, {phase.hostile_mb_sent:.1f} MB,"
            f" {phase.hostile_431} × 431"
        )
    return text


def median_row(runs: list[Phase], attacked: bool) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    text = (
        f"| {med([len(p.latencies_ms) for p in runs]):>7.0f} | {med([p.percentile(0.5) for p in runs]):6.2f}"
        f" | {med([p.percentile(0.99) for p in runs]):8.2f}"
        f" | {med([max(p.latencies_ms, default=float('nan')) for p in runs]):8.1f}"
        f" | {med([p.errors for p in runs]):6.0f}"
        f" | {med([p.rss_start_mb for p in runs]):.1f} → {med([p.rss_peak_mb for p in runs]):.1f}"
        f" → {med([p.rss_end_mb for p in runs]):.1f}"
    )
    if attacked:
        text += (
            f" | {med([p.hostile_connections for p in runs]):.0f},"
            f" {med([p.hostile_mb_sent for p in runs]):.1f} MB, {med([p.hostile_431 for p in runs]):.0f}"
        )
    return text


def verdict(servers: list[Server], phases: dict[tuple[str, bool], list[Phase]]) -> int:
    observer = servers[0].name
    quiet = statistics.median(p.percentile(0.99) for p in phases[(observer, False)])
    attacked = statistics.median(p.percentile(0.99) for p in phases[(observer, True)])
    growth = statistics.median(p.rss_peak_mb - p.rss_start_mb for p in phases[(observer, True)])
    met = attacked < TARGET_P99_MS
    print(
        f"\nObserver, normal client's p99 under the endless header: {attacked:.2f} ms"
        f" (quiet, same run: {quiet:.2f} ms; ratio {attacked / quiet:.2f});"
        f" target < {TARGET_P99_MS:.0f} ms: {'met' if met else 'NOT met'}."
        f" Memory growth during the attack (peak − start): {growth:.1f} MB."
    )
    return 0 if met else 1
