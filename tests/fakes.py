"""Real HTTP servers on loopback standing in for the gateway and the lakehouse LLM, and the
webhook run as a real process. Tests tell the fakes to answer, fail, hang or send garbage."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from observer.intake.group_commit import Intake
from observer.intake.spool import list_segments, segment_path, segment_records
from observer.settings import Settings


@dataclass
class Reply:
    """Answer with `status` and a JSON `body` (or raw bytes), after `delay` seconds."""

    status: int = 200
    body: Any = field(default_factory=dict)
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Do not answer for `seconds` (longer than the client's timeout), then close."""

    seconds: float = 30.0


@dataclass
class Drop:
    """Close the connection without answering."""


Behaviour = Reply | Hang | Drop


@dataclass
class Seen:
    method: str
    path: str
    body: Any


class FakeUpstream:
    """A small real HTTP server on 127.0.0.1. `script(path, ...)` queues behaviours for a path;
    when a path's queue is empty its default (`default(path, ...)`) answers, else 200 `{}`."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._queues: dict[str, deque[Behaviour]] = defaultdict(deque)
        self._defaults: dict[str, Behaviour] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        handler = self._handler_class()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def script(self, path: str, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queues[path].extend(behaviours)

    def default(self, path: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._defaults[path] = behaviour

    def seen(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _next(self, path: str) -> Behaviour:
        with self._lock:
            queue = self._queues[path]
            if queue:
                return queue.popleft()
            return self._defaults.get(path, Reply())

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                with fake._lock:
                    fake.requests.append(Seen(self.command, self.path, body))
                behaviour = fake._next(self.path)
                if isinstance(behaviour, Hang):
                    fake._stop.wait(behaviour.seconds)
                    self.close_connection = True
                    return
                if isinstance(behaviour, Drop):
                    self.close_connection = True
                    return
                if behaviour.delay:
                    fake._stop.wait(behaviour.delay)
                payload = (
                    behaviour.body
                    if isinstance(behaviour.body, bytes)
                    else json.dumps(behaviour.body).encode()
                )
                self.send_response(behaviour.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for name, value in behaviour.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _handle

        return Handler


class WebhookProcess:
    """`observer webhook` as a real child process on 127.0.0.1 and a free port."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        full_env = {**os.environ, **env, "OBSERVER_PORT": env.get("OBSERVER_PORT", "0")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "observer.cli", "webhook"],
            env=full_env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if "listening on" not in line:
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise RuntimeError(f"webhook did not start: {line!r} {err}")
        self.url = line.rsplit(" ", 1)[1].strip()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("webhook did not answer /health")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


class FailingFsync:
    """Stands in for the webhook's fsync helper and answers every fsync with EIO (for unit tests
    of the intake; the real helper's own failures are tested with missing files)."""

    def __init__(self, intake: Intake[Any]) -> None:
        self.intake = intake

    def request(self, path: Path) -> None:
        asyncio.get_running_loop().call_soon(self.intake._synced, errno.EIO, 1)

    def stop(self) -> None:
        pass


def spool_records(settings: Settings) -> list[bytes]:
    """Every record in the spool, in order (`event_id`, a tab, the ops.jsonl line)."""
    spool = settings.layout.spool_dir
    return [
        line
        for segment in list_segments(spool)
        for line in segment_records(segment_path(spool, segment)).splitlines()
    ]


def api_request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One Prefect API request, retried on 503 as Prefect's own client does (SQLite busy under
    the load of a whole test session)."""
    for _ in range(20):
        answer = httpx.request(method, url, timeout=30, **kwargs)
        if answer.status_code != 503:
            return answer
        time.sleep(0.5)
    return answer


def api_call(method: str, url: str, **kwargs: Any) -> Any:
    """`api_request`, which must succeed; its JSON."""
    answer = api_request(method, url, **kwargs)
    answer.raise_for_status()
    return answer.json()


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """Stop a `prefect worker start` process as `observer up` does: Prefect 3.9's worker keeps
    going after its first SIGINT and kills itself at the second."""
    for _ in range(2):
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                continue
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def wait_until_online(api_url: str, pool: str, name: str, timeout: float = 120) -> None:
    """Wait until the worker `name` of `pool` has sent its first heartbeat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", json={}).json()
        if any(w["name"] == name and w["status"] == "ONLINE" for w in workers):
            return
        time.sleep(0.25)
    raise RuntimeError(f"worker {name!r} of pool {pool!r} not online within {timeout:.0f} s")
