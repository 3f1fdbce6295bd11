"""Consolidation run time on large ops files, and `observed()` overhead per call.

`python -m bench consolidate` (1M and 10M-line ops.jsonl) or `--quick` (1M only); `--runs=N`.

1. A consolidation run (`build_playbook`: read the window from the tail, parse, polars evidence,
   decide against the saved state) on a 1M- and a 10M-line ops.jsonl, against a plain read of the
   window's bytes (seek + one read) in the same run. Target: ≤ 1 s at 1M. Posting is network time,
   measured separately as one forced run posting every entry to a fake gateway on loopback.
2. `observed_sync()` / `observed()` per call against a bare httpx POST to the same fake gateway, with
   a shared client (keep-alive) on both sides, and `observed_sync()` with its default per-call
   client. The difference is the op, the JSON summary and the durable (fsync'd) recording.

Files live in a temporary directory, deleted at the end. The page cache is warm (files just written).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from bench.common import Figure, ratio_line, repeat, stopwatch
from observer.files import read_tail
from observer.observed import observed, observed_sync
from observer.ops import Op
from observer.pipelines.playbooks import ConsolidateParameters, build_playbook, deliver
from observer.settings import Settings, load_settings
from observer.upstream import Upstreams

ENDPOINTS = 20
BLOCK_LINES = 10_000
CALLS = 200

# A minimal keep-alive HTTP server in its own process, answering every POST in one write. (The test
# fake, http.server, writes headers and body apart; with keep-alive that meets delayed ACKs and costs
# ~40 ms a call, which would drown what is measured here.)
GATEWAY_SCRIPT = r"""
import asyncio
BODY = b'{"rows":[1,2,3],"row_count":3}'
REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            writer.write(REPLY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


@contextlib.contextmanager
def loopback_gateway() -> Iterator[str]:
    """The benchmark's gateway on 127.0.0.1 in a child process; stopped on exit."""
    child = subprocess.Popen(
        [sys.executable, "-c", GATEWAY_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(child.stdout.readline()) if child.stdout else 0
        yield f"http://127.0.0.1:{port}"
    finally:
        child.terminate()
        child.wait(timeout=10)
        if child.stdout:
            child.stdout.close()


def main(options: list[str]) -> int:
    runs = next((int(o.split("=", 1)[1]) for o in options if o.startswith("--runs=")), 5)
    sizes = [1_000_000] if "--quick" in options else [1_000_000, 10_000_000]
    with (
        tempfile.TemporaryDirectory(prefix="observer-bench-consolidate-") as scratch,
        loopback_gateway() as gateway_url,
    ):
        for lines in sizes:
            data_dir = str(Path(scratch) / f"data-{lines}")
            settings = load_settings(OBSERVER_DATA_DIR=data_dir, GATEWAY_URL=gateway_url)
            write_ops(settings.layout.ops_path, lines)
            consolidation(settings, lines, runs)
            settings.layout.ops_path.unlink()
        data_dir = str(Path(scratch) / "observed")
        settings = load_settings(OBSERVER_DATA_DIR=data_dir, GATEWAY_URL=gateway_url)
        observed_overhead(settings, runs)
    return 0


def write_ops(path: Path, lines: int) -> None:
    """`lines` realistic ops (≈200 bytes each) over `ENDPOINTS` endpoints, 10% failures."""
    block = b"".join(
        Op(
            timestamp=f"2026-04-23T10:{i // 600 % 60:02d}:{i // 10 % 60:02d}.{i % 1000:03d}Z",
            endpoint=f"/tool/{i % ENDPOINTS}",
            input_summary=f"request {i} for staffing in Springfield, IL",
            success=i % 10 != 0,
            duration_ms=i % 97 + 0.5 * (i % 2),
            output_summary="filled",
            source="mcp",
        ).to_line()
        + b"\n"
        for i in range(BLOCK_LINES)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(path, "wb") as handle:
        for _ in range(lines // BLOCK_LINES):
            handle.write(block)
    size_mb = path.stat().st_size / 1e6
    print(
        f"wrote {lines:,} ops ({size_mb:,.0f} MB) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )


def consolidation(settings: Settings, lines: int, runs: int) -> None:
    params = ConsolidateParameters()
    tail = read_tail(settings.layout.ops_path, params.window_ops)

    def plain_read() -> None:
        with open(settings.layout.ops_path, "rb") as handle:
            handle.seek(tail.start)
            handle.read(tail.end - tail.start)

    label = f"{lines // 1_000_000}M lines"
    baseline = repeat(
        f"plain read of the window's bytes, {label}", runs, lambda: stopwatch(plain_read)
    )
    run = repeat(
        f"consolidation run (decide), {label}",
        runs,
        lambda: stopwatch(lambda: build_playbook(settings, params)),
    )
    with Upstreams(settings) as upstreams:
        forced = build_playbook(settings, params.model_copy(update={"force": True}))
        post = repeat(
            f"post all {len(forced.to_post)} entries (loopback), {label}",
            runs,
            lambda: stopwatch(lambda: [deliver(settings, p, upstreams) for p in forced.to_post]),
        )
    for figure in (baseline, run, post):
        print(figure.line())
    print(ratio_line(f"consolidation run / plain read, {label}", run, baseline))
    verdict = "meets" if run.median <= 1.0 else "MISSES"
    print(f"target ≤ 1 s per run: {verdict} ({run.median:.3f} s, {lines:,} lines)", flush=True)


def observed_overhead(settings: Settings, runs: int) -> None:
    """Per-call time of `observed()` and of a bare httpx POST; the variants alternate within each
    run, so load from other processes falls on all of them alike."""
    body = {"sql": "select * from shifts where city = 'Springfield'", "limit": 10}
    url = f"{settings.gateway_url}/query"
    with httpx.Client(timeout=settings.http_timeout_seconds) as client:
        sync = interleaved(
            {
                "bare httpx POST, shared client": lambda: client.post(url, json=body),
                "observed_sync(), shared client": lambda: observed_sync(
                    "/query", body, "q", settings=settings, client=client
                ),
                "observed_sync(), default per-call client": lambda: observed_sync(
                    "/query", body, "q", settings=settings
                ),
            },
            runs,
        )
    bare, shared, default = sync
    bare_async, wrapped_async = asyncio.run(_async_figures(settings, body, runs))
    for figure in (*sync, bare_async, wrapped_async):
        print(figure.line())
    print(ratio_line("observed_sync() / bare httpx (shared client)", shared, bare))
    print(ratio_line("observed_sync() default client / bare httpx", default, bare))
    print(ratio_line("observed() / bare async httpx (shared client)", wrapped_async, bare_async))
    print(f"observed_sync() overhead per call: {shared.median - bare.median:.3f} ms", flush=True)
    print(f"observed() overhead per call: {wrapped_async.median - bare_async.median:.3f} ms")
    print(
        f"(each call fsyncs its op into the spool; a bare fsync here: {_fsync_ms(settings):.3f} ms)"
    )


def interleaved(actions: dict[str, Callable[[], object]], runs: int) -> list[Figure]:
    """Milliseconds per call of each action, `CALLS` calls a sample, actions taking turns."""
    values: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(runs):
        for name, action in actions.items():
            started = time.perf_counter()
            for _ in range(CALLS):
                action()
            values[name].append((time.perf_counter() - started) / CALLS * 1000)
    return [Figure(name, samples, "ms") for name, samples in values.items()]


async def _async_figures(
    settings: Settings, body: dict[str, object], runs: int
) -> tuple[Figure, Figure]:
    url = f"{settings.gateway_url}/query"
    bare: list[float] = []
    wrapped: list[float] = []
    async with httpx.AsyncClient(timeout=settings.http_timeout_seconds) as client:
        for _ in range(runs):
            for samples, make in (
                (bare, lambda: client.post(url, json=body)),
                (wrapped, lambda: observed("/query", body, "q", settings=settings, client=client)),
            ):
                started = time.perf_counter()
                for _ in range(CALLS):
                    await make()
                samples.append((time.perf_counter() - started) / CALLS * 1000)
    return (
        Figure("bare async httpx POST, shared client", bare, "ms"),
        Figure("observed(), shared AsyncClient", wrapped, "ms"),
    )


def _fsync_ms(settings: Settings) -> float:
    path = settings.layout.observer_dir / "fsync-probe"
    with open(path, "ab") as handle:
        started = time.perf_counter()
        for _ in range(CALLS):
            handle.write(b"x" * 200)
            handle.flush()
            os.fsync(handle.fileno())
        elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed / CALLS * 1000
