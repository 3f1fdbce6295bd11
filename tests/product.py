"""The whole product as a user starts it: `observer up` in a process group of its own, on free
ports and its own data directory, driven over HTTP and stopped with Ctrl-C (SIGINT) like a terminal
would; and the few Prefect API calls a test needs to start runs and wait for them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from observer.cli.console import descendants
from observer.ops import Op
from tests.fakes import api_call

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Variables of the test process that must not leak into a product started for a test.
PRIVATE = ("PREFECT_API_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL", "OBSERVER_INSTANCE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ObserverUp:
    """`observer up [ARGS]` with `env` on top of a clean copy of this process's environment."""

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.web_port = free_port()
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in PRIVATE and not k.startswith("OBSERVER_")
        }
        self.env = {
            **base,
            "OBSERVER_DATA_DIR": str(self.data_dir),
            "OBSERVER_PORT": str(self.web_port),
            "OBSERVER_PROJECT_DIR": str(ROOT),
            "OVERSEER_CORRECTIONS_PATH": str(workdir / "kb" / "overseer_corrections.jsonl"),
            **env,
        }
        self.url = f"http://127.0.0.1:{self.web_port}"
        self._log_path = workdir / "up.log"
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "observer.cli", "up", *args],
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )

    @property
    def ops_path(self) -> Path:
        return self.data_dir / "_observer" / "ops.jsonl"

    def log(self) -> str:
        return self._log_path.read_text(errors="replace")

    def wait_up(self, timeout: float = 300) -> None:
        """Until the webhook answers, which `observer up` starts last."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"observer up exited ({self.process.returncode}):\n{self.log()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"observer up did not start within {timeout:.0f} s:\n{self.log()}")

    def post_event(self, body: dict[str, Any]) -> None:
        answer = httpx.post(f"{self.url}/event", json=body, timeout=10)
        assert answer.status_code == 200, answer.text

    def ops_on_disk(self) -> bytes:
        """The op lines on disk: the sealed segments the history keeps, then ops.jsonl (a
        compact-history run may have sealed ops.jsonl meanwhile)."""
        segments = sorted((self.data_dir / "_observer" / "segments").glob("*.jsonl"))
        files = [*segments, self.ops_path]
        return b"".join(path.read_bytes() for path in files if path.exists())

    def wait_for_op(self, text: str, timeout: float = 240) -> None:
        """Until an op line on disk contains `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text.encode() in self.ops_on_disk():
                return
            time.sleep(0.5)
        raise AssertionError(f"{text!r} did not reach {self.ops_path} in {timeout:.0f} s")

    def stop(self) -> None:
        """Ctrl-C, as in a terminal. If that does not end it, its process group and those of its
        children (each child runs in a group of its own) are killed."""
        try:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGINT)
                try:
                    self.process.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    for pid in [*descendants(self.process.pid), self.process.pid]:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(pid, signal.SIGKILL)  # a child's group: its own runs
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self.process.wait(timeout=30)
        finally:
            self._log.close()


def sample_op(**fields: Any) -> Op:
    """An op with every field an op needs, `fields` over them."""
    required = {
        "timestamp": "2026-04-23T10:00:00.000Z",
        "endpoint": "e",
        "input_summary": "i",
        "success": True,
        "duration_ms": 1,
        "output_summary": "o",
    }
    return Op(**(required | fields))


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def run_deployment(
    api_url: str, flow: str, deployment: str, parameters: dict[str, Any] | None = None
) -> str:
    """Create a run of `flow/deployment` (what the UI's Run button and `prefect deployment run`
    do); return its id. Retried on 503, as Prefect's own client does (SQLite busy)."""
    found = api_call("GET", f"{api_url}/deployments/name/{flow}/{deployment}")
    created = api_call(
        "POST",
        f"{api_url}/deployments/{found['id']}/create_flow_run",
        json={"parameters": parameters or {}},
    )
    return str(created["id"])


def wait_for_runs(api_url: str, run_ids: list[str], timeout: float = 300) -> dict[str, str]:
    """Each run's final state type, once every one has one."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for run_id in run_ids:
            answer = httpx.get(f"{api_url}/flow_runs/{run_id}", timeout=30)
            answer.raise_for_status()
            states[run_id] = answer.json()["state"]["type"]
        if all(state in TERMINAL for state in states.values()):
            return states
        time.sleep(1)
    raise AssertionError(f"runs not finished within {timeout:.0f} s: {states}")
