"""`observer up`: the whole product on embedded defaults, in the foreground, until Ctrl-C.

Starts a local Prefect server (SQLite under the data dir, UI on 127.0.0.1), creates the process
work pool, applies prefect.yaml, starts a worker and the webhook. Everything lives under
`OBSERVER_DATA_DIR`, so a second start reuses the same runs, schedules and ops. Ctrl-C (or SIGTERM)
stops the children in reverse order, each with the signal it obeys (a Prefect worker ignores its
first SIGTERM, so it gets SIGINT).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from deployments.apply import WORK_POOL, crash_orphaned_runs, deploy, prefect_environment
from observer.errors import CommandError, StartupFailed
from observer.settings import Settings
from observer.webhook.serve import bind_socket

SERVER_START_TIMEOUT = 180.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    stop_signal: int

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def run_everything(settings: Settings, *, prefect_port: int = 4200) -> int:
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    env = prefect_environment(settings, api_url)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        for port, variable in ((prefect_port, "--prefect-port"), (settings.port, "OBSERVER_PORT")):
            if port:
                bind_socket(
                    "127.0.0.1" if variable != "OBSERVER_PORT" else settings.host, port
                ).close()
        _say(
            f"starting the Prefect server on {api_url.removesuffix('/api')} (data in {env['PREFECT_HOME']})"
        )
        children.append(
            _start(
                "prefect server",
                env,
                signal.SIGTERM,
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(prefect_port),
            )
        )
        _wait_until_healthy(
            f"{api_url}/health", children[-1], "the Prefect server", lambda: stopping
        )
        _say("applying prefect.yaml (work pool, deployments, schedules, triggers)")
        deploy(env)
        orphans = crash_orphaned_runs(api_url)
        if orphans:
            _say(f"marked {orphans} run(s) left unfinished by the previous stop as Crashed")
        children.append(
            _start(
                "prefect worker",
                env,
                signal.SIGINT,
                "worker",
                "start",
                "--pool",
                WORK_POOL,
                "--name",
                "observer-worker",
            )
        )
        webhook = _spawn([sys.executable, "-m", "observer.cli", "webhook"], env)
        children.append(Child("webhook", webhook, signal.SIGTERM))
        _wait_until_healthy(
            f"http://{settings.host}:{settings.port}/health", children[-1], "the webhook"
        )
        _say(
            f"up: UI http://127.0.0.1:{prefect_port}  webhook http://{settings.host}:{settings.port}"
            f"  ops {settings.layout.ops_path.resolve()}  (Ctrl-C stops everything)"
        )
        while not stopping:
            dead = [child.name for child in children if not child.alive()]
            if dead:
                raise StartupFailed(f"{', '.join(dead)} stopped unexpectedly")
            time.sleep(0.5)
        return 0
    except CommandError as exc:
        print(f"observer: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in reversed(children):
            _say(f"stopping {child.name}")
            child.stop()


def _start(name: str, env: dict[str, str], stop_signal: int, *args: str) -> Child:
    return Child(name, _spawn([sys.executable, "-m", "prefect", *args], env), stop_signal)


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A process group of its own: a terminal's Ctrl-C reaches only the supervisor, which then
    # stops the children in order.
    return subprocess.Popen(command, env=env, process_group=0)


def _wait_until_healthy(
    url: str, child: Child, what: str, stopping: Callable[[], bool] = lambda: False
) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if not child.alive():
            raise StartupFailed(f"{what} exited during start-up (see its log above)")
        if stopping():
            raise StartupFailed("interrupted during start-up")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise StartupFailed(f"{what} did not answer within {SERVER_START_TIMEOUT:.0f} s")


def _say(message: str) -> None:
    print(f"observer: {message}", flush=True)
