"""`observer up`: the whole product on embedded defaults, in the foreground, until Ctrl-C.

Starts a local Prefect server (SQLite under the data dir, UI on 127.0.0.1), creates the process
work pool, applies prefect.yaml, starts a worker and the webhook. Everything lives under
`OBSERVER_DATA_DIR`, so a second start reuses the same runs, schedules and ops. Ctrl-C (or SIGTERM)
stops the children in reverse order, each with the signal it obeys (a Prefect worker ignores its
first SIGTERM, so it gets SIGINT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from observer.serve import PortInUse, bind_socket
from observer.settings import Settings

WORK_POOL = "observer-process"
SERVER_START_TIMEOUT = 180.0
SCHEDULE_VARIABLES = (
    "OBSERVER_CYCLE_SECONDS",
    "OBSERVER_CONSOLIDATE_SECONDS",
    "OBSERVER_INGEST_SAFETY_SECONDS",
)


class StartupFailed(RuntimeError):
    pass


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


def project_dir() -> Path:
    """The checkout holding prefect.yaml: where flow runs import `flows` and `tasks` from."""
    configured = os.environ.get("OBSERVER_PROJECT_DIR")
    if configured:
        return Path(configured).resolve()
    for candidate in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (candidate / "prefect.yaml").exists():
            return candidate
    raise StartupFailed("cannot find prefect.yaml: run from the Observer checkout")


def prefect_environment(settings: Settings, api_url: str) -> dict[str, str]:
    """Environment for every Prefect process of the product (flow runs inherit the worker's)."""
    data_dir = settings.data_dir.resolve()
    cycle = _seconds(settings.cycle_seconds)
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(data_dir / "_prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "1"),
        "PREFECT_WORKER_PREFETCH_SECONDS": os.environ.get("PREFECT_WORKER_PREFETCH_SECONDS", "5"),
        "OBSERVER_DATA_DIR": str(data_dir),
        "OBSERVER_PROJECT_DIR": str(project_dir()),
        "OBSERVER_CYCLE_SECONDS": cycle,
        "OBSERVER_CONSOLIDATE_SECONDS": _seconds(settings.cycle_seconds * 5),
        # The webhook wakes ingestion itself (and again while records wait); this schedule only
        # covers records spooled while the webhook was down.
        "OBSERVER_INGEST_SAFETY_SECONDS": _seconds(max(300.0, settings.cycle_seconds)),
    }


def render_prefect_yaml(text: str, env: dict[str, str]) -> str:
    """prefect.yaml with the schedule lengths filled in.

    `prefect deploy` validates schedules before it resolves `{{ $VAR }}` templates, so an interval
    taken from OBSERVER_CYCLE must be written in as a number first.
    """
    for name in SCHEDULE_VARIABLES:
        text = text.replace(f'"{{{{ ${name} }}}}"', env[name])
    return text


def deploy(env: dict[str, str]) -> None:
    """Create the work pool and apply prefect.yaml (idempotent: safe on every start)."""
    project = Path(env["OBSERVER_PROJECT_DIR"])
    rendered = Path(env["PREFECT_HOME"]) / "prefect.rendered.yaml"
    rendered.parent.mkdir(parents=True, exist_ok=True)
    rendered.write_text(render_prefect_yaml((project / "prefect.yaml").read_text(), env))
    _prefect(env, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
    _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", str(rendered), cwd=project)


def crash_orphaned_runs(api_url: str) -> int:
    """Mark runs a previous stop left pending or running as Crashed, before the worker starts.

    A worker stopped while it was starting a run leaves it `Pending` for ever; with concurrency 1
    it holds the deployment's slot, so every later run would be cancelled. No run of this work pool
    can really be in progress before its worker starts, so each one found is an orphan.
    """
    query = {
        "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}},
        "work_pools": {"name": {"any_": [WORK_POOL]}},
        "limit": 200,
    }
    orphans = httpx.post(f"{api_url}/flow_runs/filter", json=query, timeout=30).json()
    state = {
        "type": "CRASHED",
        "name": "Crashed",
        "message": "Observer was stopped while this run was starting or running",
    }
    for run in orphans:
        httpx.post(
            f"{api_url}/flow_runs/{run['id']}/set_state",
            json={"state": state, "force": True},
            timeout=30,
        ).raise_for_status()
    return len(orphans)


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
            f"  ops {settings.ops_path.resolve()}  (Ctrl-C stops everything)"
        )
        while not stopping:
            dead = [child.name for child in children if not child.alive()]
            if dead:
                raise StartupFailed(f"{', '.join(dead)} stopped unexpectedly")
            time.sleep(0.5)
        return 0
    except (StartupFailed, PortInUse, subprocess.CalledProcessError) as exc:
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


def _prefect(env: dict[str, str], *args: str, cwd: Path | None = None) -> None:
    subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=cwd, check=True)


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


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _say(message: str) -> None:
    print(f"observer: {message}", flush=True)
