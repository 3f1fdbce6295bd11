"""`POST /event` throughput and latency: Observer's webhook against the original, same run, same machine.

Why it is built this way:
- Both servers are started by this run and measured alternately (Observer, original, then original,
  Observer, ...) so that drift in the machine's load hits both; we quote medians and ratios, never a
  figure from another day or machine.
- The two do not do the same work: Observer answers 200 only once the event is written *and fsync'd*
  (group commit); the original answers first and appends afterwards without fsync. A single-threaded
  loop of durable writes the spool's way (into allocated space, each followed by `fdatasync`),
  measured in the same run on the same filesystem, shows what durability costs.
- The load generator is `wrk` (C, one thread): a Python client would be slower than the servers.
  Only 2xx answers count; any non-2xx or socket error fails the measurement.
- A third server, uvicorn configured as Observer's webhook is but serving an app that only parses
  the body and answers (`bench/ceiling_app.py`), is alternated with the two: it shows how far the
  ASGI server alone gets against the original, and how much of that Observer's durable work keeps.
- A fourth, `bench/durable_floor.py` (a bare uvloop protocol that makes the bodies durable and
  answers, nothing else: each at once with one connection, those of a loop turn together with
  more), shows the least a durable answer costs here in every cell: with one connection every event
  waits for its own flush, so no webhook can beat it; with more, how far plain group commit goes
  before any work per event.
- `POST /events` (a JSON array of N copies of the event) is measured at 16 connections for N = 1,
  10 and 100, in events/s, each round next to a run of the original's single-event POST /event,
  which has no batch endpoint: that is the baseline clients that batch are compared with.
- After the load, Observer's spool must hold at least as many lines as events acknowledged (an
  acknowledged event is never lost), and each server's memory is read after 200k events.

Options: `--quick` (1 run of 3 s per cell, smaller memory run: a smoke test), `--reference=DIR` (the
original's directory, default `../shared/reference` from the repository root, or the environment
variable OBSERVER_REFERENCE_DIR), `--runs=N`, `--seconds=S`, `--rss-events=N`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.common import AllocatedFile, Figure, peak_rss_mb, ratio_line, rss_mb

REPO = Path(__file__).resolve().parent.parent
WORK_DIR = REPO / "bench" / ".ref"  # gitignored: the original's install and the runs' temp dirs
LUA_SCRIPT = Path(__file__).resolve().parent / "webhook.lua"
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference"
CONNECTIONS = (1, 16, 64)
BATCH_SIZES = (1, 10, 100)  # events per POST /events request, at BATCH_CONNECTIONS
BATCH_CONNECTIONS = 16
START_TIMEOUT_S = 120.0  # importing prefect-adjacent code on a busy 2-core machine can take a while
BASELINE_LINE = b'{"op":"' + b"x" * 221 + b'"}\n'  # 230 bytes, like one spool record
ISSUE_TARGET_AT_16 = 0.6  # durable throughput at 16 connections: >= 0.6x the original (goal 1x)
ISSUE_TARGET_AT_1 = 0.3  # ... and at 1 connection >= 0.3x
ISSUE_TARGET_P99 = 2.0  # p99 at 16 connections <= 2x the original's
ISSUE_TARGET_BATCH = (
    10.0  # POST /events, batches of 100: >= 10x the original's single-event events/s
)
STEAL = 7  # where the steal time is among the fields of /proc/stat's `cpu` line
CALM_STEAL = 0.05  # a round with at most this share of steal is one the host left alone

DURABILITY_NOTE = (
    "Observer answers 200 only after the event is written and fsync'd (group commit: one fsync per"
    " batch).\nThe original answers first and appends to ops.jsonl afterwards, without fsync: its"
    " figures carry no durability."
)


@dataclass(frozen=True)
class Plan:
    runs: int
    seconds: int
    warmup_seconds: int
    durable_seconds: float
    rss_events: int


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, from the machine-readable line printed by webhook.lua's `done` hook."""

    requests: int
    duration_s: float
    non_2xx: int  # wrk counts answers with status >= 400 here
    socket_errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    steal: float  # share of the CPUs' time the hypervisor gave to other guests during the run

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx

    @property
    def rate(self) -> float:
        return self.ok / self.duration_s

    @property
    def failed(self) -> bool:
        return self.non_2xx > 0 or any(self.socket_errors.values())

    def problems(self) -> str:
        parts = [f"{self.non_2xx} non-2xx"] if self.non_2xx else []
        parts += [f"{count} {kind} errors" for kind, count in self.socket_errors.items() if count]
        return ", ".join(parts)


@dataclass
class Server:
    """A server process this run started; it is stopped by its PID only."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    acked: int = 0  # 2xx answers wrk counted over the whole run
    results: dict[int, list[WrkResult]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# ── entry point ─────────────────────────────────────────────────────────────────────────────────


def main(options: list[str]) -> int:
    try:
        plan, reference = parse_options(options)
    except ValueError as exc:  # no original to compare against
        print(f"webhook bench: {exc}", file=sys.stderr)
        return 2
    missing = missing_tools()
    if missing:
        for message in missing:
            print(f"webhook bench: {message}", file=sys.stderr)
        return 2
    bun = prepare_original(reference)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="webhook-run-", dir=WORK_DIR))
    servers: list[Server] = []
    try:
        with fake_gateway() as gateway_url:
            servers.append(start_observer(scratch, gateway_url))
            servers.append(start_original(scratch, bun, gateway_url))
            servers.append(start_ceiling(scratch))
            servers.append(start_floor(scratch))
            return measure(plan, servers, scratch)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def parse_options(options: list[str]) -> tuple[Plan, Path]:
    """`python -m bench` passes only the arguments that start with '-', hence `--name=value`."""
    quick = "--quick" in options
    plan = Plan(
        runs=1 if quick else 3,
        seconds=3 if quick else 5,
        warmup_seconds=1 if quick else 2,
        durable_seconds=1.0 if quick else 2.0,
        rss_events=20_000 if quick else 200_000,
    )
    reference = Path(os.environ.get("OBSERVER_REFERENCE_DIR") or DEFAULT_REFERENCE)
    for option in options:
        name, _, value = option.partition("=")
        if name == "--quick":
            continue
        if name == "--reference" and value:
            reference = Path(value)
        elif name in ("--runs", "--seconds", "--rss-events") and value.isdigit() and int(value) > 0:
            key = {"--runs": "runs", "--seconds": "seconds", "--rss-events": "rss_events"}[name]
            plan = Plan(**{**plan.__dict__, key: int(value)})
        else:  # `python -m bench` hands every benchmark all options: another's are not an error
            print(f"webhook bench: ignoring option {option!r} (not one of this benchmark's)")
    if not (reference / "observer.ts").is_file():
        raise ValueError(
            f"no observer.ts in {reference}; pass --reference=DIR or set OBSERVER_REFERENCE_DIR"
        )
    return plan, reference.resolve()


def missing_tools() -> list[str]:
    """The prerequisites this bench does not install itself, each with how to get it."""
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk (the load generator) is not installed: apt-get install -y wrk")
    if shutil.which("npm") is None:
        missing.append(
            "npm is not installed (it fetches the original's Bun from the npm registry):"
            " apt-get install -y npm"
        )
    return missing


# ── the two servers and the fake gateway ─────────────────────────────────────────────────────────


def prepare_original(reference: Path) -> Path:
    """Copy the original into the gitignored work dir, bound to loopback, and install its Bun.

    The original binds 0.0.0.0; the copy is changed to 127.0.0.1 (nothing else) so that the bench
    never opens a port to the network. `npm i` runs again only when package.json changes.
    """
    target = WORK_DIR / "original"
    target.mkdir(parents=True, exist_ok=True)
    source = (reference / "observer.ts").read_bytes()
    wildcard, loopback = b'hostname: "0.0.0.0"', b'hostname: "127.0.0.1"'
    if source.count(wildcard) != 1:
        raise SystemExit(
            f"webhook bench: expected one {wildcard.decode()} in the original to rebind"
        )
    replace_if_changed(target / "observer.ts", source.replace(wildcard, loopback))
    package = (reference / "package.json").read_bytes()
    stamp = target / ".installed-package.json"
    bun = target / "node_modules" / ".bin" / "bun"
    if not bun.exists() or not stamp.exists() or stamp.read_bytes() != package:
        replace_if_changed(target / "package.json", package)
        print("installing the original's dependencies (npm i) ...", flush=True)
        subprocess.run(
            ["npm", "i", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target, check=True
        )
        stamp.write_bytes(package)
    return bun


def replace_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


@contextlib.contextmanager
def fake_gateway() -> Iterator[str]:
    """The original exits unless GET $GATEWAY_URL/health answers JSON: answer it, on loopback."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status":"ok","service":"bench-fake-gateway"}'
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-gateway", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def start_observer(scratch: Path, gateway_url: str) -> Server:
    """`observer webhook` with its defaults (no token, no Prefect notifications) on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBSERVER_", "PREFECT_"))}
    env |= {
        "OBSERVER_DATA_DIR": str(scratch / "observer-data"),
        "OBSERVER_HOST": "127.0.0.1",
        "OBSERVER_PORT": "0",
        "GATEWAY_URL": gateway_url,
    }
    log_path = scratch / "observer.stderr.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "observer.cli", "webhook"],
            cwd=scratch,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,  # a Ctrl-C reaches the bench, which stops it in order
        )
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # keep reading so the pipe never fills
        assert process.stdout is not None
        for raw in process.stdout:
            lines.put(raw.decode(errors="replace"))

    threading.Thread(target=drain, name="observer-stdout", daemon=True).start()
    server = Server("Observer", process, "", log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(queue.Empty):
            line = lines.get(timeout=0.2)
            if "listening on http://" in line:
                server.url = line.rsplit(" ", 1)[-1].strip() + "/event"
                return server
    server.stop()
    raise SystemExit(f"webhook bench: Observer did not start:\n{tail(log_path)}")


def start_original(scratch: Path, bun: Path, gateway_url: str) -> Server:
    """The original under Bun, in its own working directory (it writes data/_observer/ there)."""
    home = scratch / "original-cwd"
    home.mkdir()
    port = free_port()
    env = dict(os.environ) | {
        "OBSERVER_PORT": str(port),
        "GATEWAY_URL": gateway_url,
        "LAKEHOUSE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "OBSERVER_CYCLE": "3600",  # no analyzer cycle during the bench
        "OVERSEER_CORRECTIONS_PATH": str(home / "corrections.jsonl"),
    }
    log_path = scratch / "original.stderr.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(bun), str(bun.parent.parent.parent / "observer.ts")],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server("original", process, f"http://127.0.0.1:{port}/event", log_path)
    return started(server, f"http://127.0.0.1:{port}/health")


def start_ceiling(scratch: Path) -> Server:
    """uvicorn, configured as Observer's webhook is, serving `bench.ceiling_app` (no write)."""
    return start_python_server(
        scratch,
        "ceiling",
        lambda port: [
            *("-m", "uvicorn", "bench.ceiling_app:app"),
            *("--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"),
            *("--http", "httptools", "--no-access-log", "--log-level", "warning"),
        ],
    )


def start_floor(scratch: Path) -> Server:
    """`bench/durable_floor.py`: the least a durable answer costs, in every cell."""
    path = str(scratch / "floor.jsonl")
    return start_python_server(
        scratch, "floor", lambda port: ["-m", "bench.durable_floor", str(port), path]
    )


def start_python_server(scratch: Path, name: str, arguments: Callable[[int], list[str]]) -> Server:
    """A baseline server run by this Python from the repository, on a free port (`arguments`
    gets the port), its output in `<name>.stderr.log`; returned once `/event` answers."""
    port = free_port()
    log_path = scratch / f"{name}.stderr.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, *arguments(port)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, process, f"http://127.0.0.1:{port}/event", log_path)
    return started(server, server.url)


def started(server: Server, probe_url: str) -> Server:
    """`server` once `probe_url` answers 200; stopped, and the run ended, if it never does."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and server.process.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(probe_url, timeout=2) as answer:
            if answer.status == 200:
                return server
        time.sleep(0.2)
    server.stop()
    raise SystemExit(f"webhook bench: {server.name} did not start:\n{tail(server.log_path)}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


# ── measuring ───────────────────────────────────────────────────────────────────────────────────


def run_wrk(url: str, connections: int, seconds: float, cap: int = 0, batch: int = 0) -> WrkResult:
    """One wrk run (one thread); `cap` > 0 stops after that many responses (wrk still waits out -d);
    `batch` > 0 posts arrays of that many events (to /events)."""
    env = dict(os.environ) | {"BENCH_MAX_RESPONSES": str(cap), "BENCH_BATCH": str(batch)}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    command += ["-s", str(LUA_SCRIPT), url]
    before = cpu_ticks()
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    after = cpu_ticks()
    total = sum(after) - sum(before)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            raw = json.loads(line.removeprefix("BENCH_RESULT "))
            return WrkResult(
                requests=raw["requests"],
                duration_s=raw["duration_us"] / 1e6,
                non_2xx=raw["non_2xx"],
                socket_errors={k: raw[k] for k in ("connect", "read", "write", "timeout")},
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                steal=(after[STEAL] - before[STEAL]) / total if total else 0.0,
            )
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far, by kind (the fields of /proc/stat's `cpu` line)."""
    with open("/proc/stat") as stat:
        return [int(x) for x in stat.readline().split()[1:]]


def durable_writes_per_second(directory: Path, seconds: float) -> float:
    """The raw cost of durability here: one thread writing 230 bytes at a time into allocated space
    and making each durable (`pwrite` + `fdatasync`, the spool's own way), as fast as it goes."""
    target = AllocatedFile(directory / "durable-baseline.jsonl")
    try:
        writes = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            target.write_durably(BASELINE_LINE)
            writes += 1
        return writes / elapsed
    finally:
        target.close()
        target.path.unlink()


class MachineLoad:
    """How busy the machine was with *other* work while we measured (the benchmark's noise)."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.tick = os.sysconf("SC_CLK_TCK")
        self.loads: list[float] = []
        self._start = self._snapshot()

    def sample(self) -> None:
        self.loads.append(os.getloadavg()[0])

    def shares(self) -> tuple[float, float]:
        """Since start, as shares of all cores: the CPU that processes other than this run's used,
        and the time the hypervisor ran something else while this machine's CPUs wanted to run
        (steal: a virtual machine's host busy with other guests)."""
        end = self._snapshot()
        wall, busy, steal, ours = (b - a for a, b in zip(self._start, end, strict=True))
        capacity = wall * (os.cpu_count() or 1)
        return max(0.0, (busy - steal - ours) / capacity), steal / capacity

    def _snapshot(self) -> tuple[float, float, float, float]:
        fields = cpu_ticks()
        busy = (sum(fields) - fields[3] - fields[4]) / self.tick  # all but idle and iowait
        steal = fields[STEAL] / self.tick
        ours = sum(
            u.ru_utime + u.ru_stime
            for u in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        for server in self.servers:
            with contextlib.suppress(OSError):
                with open(f"/proc/{server.pid}/stat") as stat:
                    parts = stat.read().rsplit(")", 1)[1].split()
                ours += (int(parts[11]) + int(parts[12])) / self.tick
        return time.monotonic(), busy, steal, ours


def measure(plan: Plan, started_servers: list[Server], scratch: Path) -> int:
    observer, original, ceiling, floor = started_servers
    print(DURABILITY_NOTE)
    print(
        f"\nPOST /event, 233-byte scenario event, wrk -t1, {plan.runs} run(s) x {plan.seconds} s per"
        f" cell, servers alternated; spool on {filesystem_of(scratch)}; {os.cpu_count()} cores;"
        f" bun {bun_version(original)}; load average now {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    load = MachineLoad(started_servers)
    failed = False
    rss_at_start = {server.name: rss_mb(server.pid) for server in (observer, original)}
    for server in started_servers:  # warm-up: first connections, Bun's JIT, Python's caches
        warmup = run_wrk(server.url, 16, plan.warmup_seconds)
        server.acked += warmup.ok
        if warmup.failed:
            print(f"  {server.name}: FAILED during the warm-up: {warmup.problems()}")
            failed = True
    durable_rates: dict[
        int, list[float]
    ] = {}  # per cell: the disk's speed changes with others' I/O
    for connections in CONNECTIONS:
        for run in range(plan.runs):
            load.sample()
            order = started_servers if (run + connections) % 2 == 0 else started_servers[::-1]
            for server in order:
                result = run_wrk(server.url, connections, plan.seconds)
                server.acked += result.ok
                server.results.setdefault(connections, []).append(result)
                failed |= result.failed
                print(
                    f"  c={connections:<3} run {run + 1}/{plan.runs}  {server.name:<9}"
                    f" {result.rate:>9.0f} req/s  p50 {result.p50_ms:7.2f} ms"
                    f"  p99 {result.p99_ms:7.2f} ms  steal {result.steal:4.0%}"
                    + (f"  FAILED: {result.problems()}" if result.failed else ""),
                    flush=True,
                )
            rate = durable_writes_per_second(scratch, plan.durable_seconds)
            durable_rates.setdefault(connections, []).append(rate)
    batches, originals, ceilings = measure_batches(plan, observer, original, ceiling, load)
    failed |= any(r.failed for results in batches.values() for r in results)
    failed |= any(r.failed for r in originals)
    others, stolen = load.shares()
    load.sample()

    print_summary(plan, observer, original, durable_rates)
    print_ceiling(observer, original, ceiling, durable_rates)
    print_floor(observer, original, floor)
    print_batches(batches, originals, ceilings)
    print(
        f"\nMachine: load average (1 min) {min(load.loads):.2f}-{max(load.loads):.2f} during the"
        f" cells; other processes used {others:.0%} of the {os.cpu_count()} cores meanwhile, and"
        f" the hypervisor held back {stolen:.0%} (steal time)"
        + (" (noisy: compare ratios, not absolute figures)" if others + stolen > 0.1 else "")
    )

    print(f"\nMemory after {plan.rss_events:,} events (the throughput runs count toward them):")
    resident = {}
    for server in (observer, original):
        failed |= top_up(server, plan.rss_events)
        helpers = sum(rss_mb(child) for child in children(server.pid))
        resident[server.name] = rss_mb(server.pid) + helpers
        print(
            f"  {server.name:<9} VmRSS {rss_mb(server.pid):7.1f} MB  VmHWM"
            f" {peak_rss_mb(server.pid):7.1f} MB  after {server.acked:,} acknowledged events"
            f" (VmRSS {rss_at_start[server.name]:.1f} MB once started)"
            + (f"; its child processes VmRSS {helpers:.1f} MB" if helpers else "")
        )
    ratio = resident[observer.name] / resident[original.name]
    print(
        f"  Observer (with its fsync helper) / original: {ratio:.2f}x:"
        f" target <= 2x {'met' if ratio <= 2 else 'NOT met'}"
    )

    time.sleep(1.0)  # the original appends after answering: let its last writes land
    failed |= check_correctness(observer, original, scratch)
    print("\n" + DURABILITY_NOTE)
    return 1 if failed else 0


def measure_batches(
    plan: Plan, observer: Server, original: Server, ceiling: Server, load: MachineLoad
) -> tuple[dict[int, list[WrkResult]], list[WrkResult], list[WrkResult]]:
    """POST /events at BATCH_CONNECTIONS for each batch size, each round next to a run of the
    original's single-event POST /event (the baseline, sampled at the same moments) and of the
    ceiling app parsing the largest batches (what uvicorn and a JSON parse alone reach)."""
    batches: dict[int, list[WrkResult]] = {size: [] for size in BATCH_SIZES}
    originals: list[WrkResult] = []
    ceilings: list[WrkResult] = []
    top = BATCH_SIZES[-1]
    for run in range(plan.runs):
        load.sample()
        cells: list[tuple[Server, int]] = [
            (original, 0),
            *((observer, s) for s in BATCH_SIZES),
            (ceiling, top),
        ]
        for server, size in cells if run % 2 == 0 else cells[::-1]:
            url = server.url + ("s" if size else "")  # /event -> /events
            result = run_wrk(url, BATCH_CONNECTIONS, plan.seconds, batch=size)
            server.acked += result.ok * max(size, 1)
            if server is ceiling:
                ceilings.append(result)
            else:
                (batches[size] if size else originals).append(result)
            what = f"batches of {size:<3}" if size else "single events"
            print(
                f"  c={BATCH_CONNECTIONS:<3} run {run + 1}/{plan.runs}  {server.name:<9} {what}"
                f" {result.rate * max(size, 1):>9.0f} events/s  p99 {result.p99_ms:7.2f} ms"
                f"  steal {result.steal:4.0%}"
                + (f"  FAILED: {result.problems()}" if result.failed else ""),
                flush=True,
            )
    return batches, originals, ceilings


def print_batches(
    batches: dict[int, list[WrkResult]], originals: list[WrkResult], ceilings: list[WrkResult]
) -> None:
    baseline = Figure(
        f"original, single events, c={BATCH_CONNECTIONS}", [r.rate for r in originals], "ev/s"
    )
    print(
        f"\nPOST /events (JSON arrays of the same event) at {BATCH_CONNECTIONS} connections,"
        " against the original's single-event POST /event in the same rounds:"
    )
    print("  " + baseline.line())
    for size, results in batches.items():
        figure = Figure(f"Observer, batches of {size}", [r.rate * size for r in results], "ev/s")
        p99 = Figure("p99", [r.p99_ms for r in results], "ms")
        print("  " + figure.line() + f"  p99 {p99.median:.2f} ms")
        print("  " + ratio_line(f"  batches of {size} / original", figure, baseline))
    size = BATCH_SIZES[-1]
    top = Figure("", [r.rate * size for r in batches[size]], "ev/s")
    bare = Figure(f"ceiling app, batches of {size}", [r.rate * size for r in ceilings], "ev/s")
    print(
        "  " + bare.line() + " (uvicorn + orjson.loads of the batch, nothing validated or written)"
    )
    print("  " + ratio_line(f"  ceiling, batches of {size} / original", bare, baseline))
    print("  " + ratio_line(f"  Observer / ceiling, batches of {size}", top, bare))
    ratio = top.median / baseline.median
    verdict = "met" if ratio >= ISSUE_TARGET_BATCH else "NOT met"
    print(
        f"  batches of {BATCH_SIZES[-1]}: {ratio:.1f}x the original's single-event events/s:"
        f" target >= {ISSUE_TARGET_BATCH:g}x {verdict}"
    )


def print_summary(
    plan: Plan, observer: Server, original: Server, durable_rates: dict[int, list[float]]
) -> None:
    print(f"\nMedians of {plan.runs} run(s) per cell (ratio = Observer / original):")
    print(
        f"  {'conns':>5} | {'Observer req/s':>14} {'p50 ms':>7} {'p99 ms':>7}"
        f" | {'original req/s':>14} {'p50 ms':>7} {'p99 ms':>7} | {'req/s ratio':>11} {'p99 ratio':>9}"
    )
    figures: dict[int, tuple[Figure, Figure]] = {}
    for connections in CONNECTIONS:
        row = []
        for server in (observer, original):
            results = server.results[connections]
            rate = rates(server, connections)
            p50 = Figure("p50", [r.p50_ms for r in results], "ms")
            p99 = Figure("p99", [r.p99_ms for r in results], "ms")
            row.append((rate, p50, p99))
        (o_rate, o_p50, o_p99), (r_rate, r_p50, r_p99) = row
        figures[connections] = (o_rate, r_rate)
        print(
            f"  {connections:>5} | {o_rate.median:>14.0f} {o_p50.median:>7.2f} {o_p99.median:>7.2f}"
            f" | {r_rate.median:>14.0f} {r_p50.median:>7.2f} {r_p99.median:>7.2f}"
            f" | {o_rate.median / r_rate.median:>11.3f} {o_p99.median / r_p99.median:>9.2f}"
        )
    print()
    for connections in CONNECTIONS:
        for figure in figures[connections]:
            print("  " + figure.line())
    for connections in CONNECTIONS:
        ours, theirs = figures[connections]
        print("  " + ratio_line(f"Observer / original, {connections} connection(s)", ours, theirs))
    every = Figure(
        "raw durable writes, all cells",
        [rate for rates in durable_rates.values() for rate in rates],
        "/s",
    )
    print("  " + every.line())
    for connections in CONNECTIONS:
        near = Figure(
            f"raw durable writes during the c={connections} cell", durable_rates[connections], "/s"
        )
        print("  " + near.line())
    print(
        "  "
        + ratio_line(
            "Observer at 1 connection / raw durable writes",
            figures[1][0],
            Figure("durable writes", durable_rates[1], "/s"),
        )
        + "  (same cell; 1 connection = 1 event per flush)"
    )
    for connections, target in ((16, ISSUE_TARGET_AT_16), (1, ISSUE_TARGET_AT_1)):
        ratio = figures[connections][0].median / figures[connections][1].median
        verdict = "met" if ratio >= target else "NOT met"
        print(
            f"  durable throughput at {connections} connection(s) is {ratio:.2f}x the original:"
            f" target >= {target}x {verdict}" + (" (goal >= 1x)" if connections == 16 else "")
        )
    p99 = [
        Figure("p99", [r.p99_ms for r in server.results[16]], "ms").median
        for server in (observer, original)
    ]
    verdict = "met" if p99[0] <= ISSUE_TARGET_P99 * p99[1] else "NOT met"
    print(
        f"  p99 at 16 connections is {p99[0] / p99[1]:.2f}x the original's:"
        f" target <= {ISSUE_TARGET_P99:g}x {verdict}"
    )
    print_calm_rounds(observer, original)


def rates(server: Server, connections: int, *, calm: bool = False) -> Figure:
    """A server's req/s in the cell's rounds (`calm`: only those at most CALM_STEAL steal)."""
    results = server.results[connections]
    values = [r.rate for r in results if not calm or r.steal <= CALM_STEAL]
    return Figure(f"{server.name} c={connections} req/s", values, "req/s")


def print_calm_rounds(observer: Server, original: Server) -> None:
    """The same ratios over the rounds the host left alone, beside (not instead of) the medians
    of every round: on a VM, a round at 20% steal says more about the host than the server."""
    print(
        f"  rounds at most {CALM_STEAL:.0%} steal only (each round's steal is on its line above):"
    )
    for connections in CONNECTIONS:
        ours, theirs = (rates(s, connections, calm=True) for s in (observer, original))
        if ours.values and theirs.values:
            print(
                f"    c={connections:<3} Observer {ours.median:.0f} req/s (n={len(ours.values)}),"
                f" original {theirs.median:.0f} (n={len(theirs.values)}):"
                f" ratio {ours.median / theirs.median:.3f}"
            )
        else:
            print(
                f"    c={connections:<3} too few: {len(ours.values)} of Observer's rounds,"
                f" {len(theirs.values)} of the original's"
            )


def print_ceiling(
    observer: Server, original: Server, ceiling: Server, durable_rates: dict[int, list[float]]
) -> None:
    """How far the ASGI server alone gets against the original, and Observer against it; at one
    connection, where each event waits for its own fsync, the two in series (computed)."""
    print(
        "\nCeiling: the same uvicorn serving an app that parses the body and answers, writing"
        " nothing (bench/ceiling_app.py), alternated with the two above:"
    )
    for connections in CONNECTIONS:
        medians = [rates(s, connections) for s in (observer, original, ceiling)]
        ours, theirs, bare = medians
        print(
            f"  c={connections:<3} ceiling {bare.median:>7.0f} req/s = {bare.median / theirs.median:.3f}"
            f" x the original; Observer = {ours.median / bare.median:.3f} x the ceiling"
        )
        if connections == 1:
            durable = Figure("durable writes", durable_rates[1], "/s").median
            serial = 1 / (1 / durable + 1 / bare.median)
            print(
                f"        in series with the raw durable write of the same cell ({durable:.0f}/s):"
                f" {serial:.0f} req/s = {serial / theirs.median:.3f} x the original (computed: the"
                f" ASGI path, then a flush; the floor below is measured); Observer ="
                f" {ours.median / serial:.3f} x that"
            )


def print_floor(observer: Server, original: Server, floor: Server) -> None:
    """Each cell against the least a durable answer costs: what the disk and Python's loop allow,
    without anything a real webhook does with an event."""
    print(
        "\nFloor: a bare uvloop protocol that writes the bodies into allocated space and answers"
        " once they are durable (pwrite + fdatasync on the loop; at one connection each body at"
        " once, with more the bodies of a loop turn together), no parsing, validation or stats"
        " (bench/durable_floor.py), alternated with the servers above:"
    )
    for connections in CONNECTIONS:
        ours, theirs, least = (rates(s, connections) for s in (observer, original, floor))
        print(
            f"  c={connections:<3} floor {least.median:>7.0f} req/s = {least.median / theirs.median:.3f}"
            f" x the original; Observer = {ours.median / least.median:.3f} x the floor"
            f" (min {min(least.values):.0f}, max {max(least.values):.0f}, n={len(least.values)})"
        )


def children(pid: int) -> list[int]:
    """The direct child processes of `pid` (Observer's fsync helper)."""
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def top_up(server: Server, target: int) -> bool:
    """Send events until the server has acknowledged `target` in this run; True if any failed."""
    rates = [r.rate for r in server.results.get(16, [])] or [1000.0]
    rate = max(500.0, sorted(rates)[len(rates) // 2])
    while server.acked < target:
        remaining = target - server.acked
        seconds = min(60.0, max(1.0, remaining / rate * 1.1 + 0.5))
        result = run_wrk(server.url, 16, seconds, cap=remaining)
        server.acked += result.ok
        if result.failed:
            print(f"  {server.name}: FAILED while sending: {result.problems()}")
            return True
        if result.ok == 0:
            print(f"  {server.name}: no event acknowledged in {seconds:.0f} s")
            return True
        rate = max(500.0, result.rate)
    return False


def check_correctness(observer: Server, original: Server, scratch: Path) -> bool:
    """No acknowledged event lost: spool lines >= 2xx answers. True if the check failed."""
    spool = scratch / "observer-data" / "_observer" / "spool"
    lines = sum(path.read_bytes().count(b"\n") for path in sorted(spool.glob("*.jsonl")))
    lost = lines < observer.acked
    print(
        f"\nCorrectness: Observer's spool holds {lines:,} lines for {observer.acked:,} 2xx answers"
        f" counted by wrk -> {'EVENTS LOST' if lost else 'no acknowledged event lost'}"
        f" ({lines - observer.acked:+,}: requests in flight when a wrk run ended are written but"
        " not counted)"
    )
    ops = scratch / "original-cwd" / "data" / "_observer" / "ops.jsonl"
    written = ops.read_bytes().count(b"\n") if ops.exists() else 0
    print(
        f"             the original's ops.jsonl holds {written:,} lines for {original.acked:,} 2xx"
        " answers (written after answering, never fsync'd)"
    )
    errors = [
        line
        for line in observer.log_path.read_text(errors="replace").splitlines()
        if "ERROR" in line or "Traceback" in line
    ]
    if errors:
        print(f"             Observer logged {len(errors)} error line(s), first: {errors[0]}")
    return lost or bool(errors)


def filesystem_of(path: Path) -> str:
    """The filesystem type and device under `path` (a tmpfs would make fsync free and meaningless)."""
    resolved, best = str(path.resolve()), ("?", "?", "")
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            device, mount_point, kind = line.split()[:3]
            inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best[2]):
                best = (kind, device, mount_point)
    return f"{best[0]} ({best[1]})"


def bun_version(original: Server) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        exe = os.readlink(f"/proc/{original.pid}/exe")
        done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()
    return "?"
