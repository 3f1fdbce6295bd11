"""`observer up`: the whole product on embedded defaults, in the foreground, until Ctrl-C.

Starts a local Prefect server (SQLite under the data dir, or the PostgreSQL that Prefect's
`PREFECT_SERVER_DATABASE_CONNECTION_URL` names, checked first; UI on 127.0.0.1), creates the work pool
(type observer-warm, see observer/worker/), applies prefect.yaml, starts a worker and the webhook. Everything lives under
`OBSERVER_DATA_DIR`, so a second start reuses the same runs, schedules and ops. `--no-server` starts
all but the Prefect server and joins the one at PREFECT_API_URL (another host's). Once everything
answers, the process becomes the light console (`observer.cli.console`: same pid, same children,
the standard library only), which keeps the children until Ctrl-C or SIGTERM and then stops them
in reverse order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from deployments.apply import crash_orphaned_runs, deploy, prefect_environment
from observer.cli.console import (
    LOG_BYTES,
    Child,
    adopt_orphans,
    old_copy,
    say,
    start_console,
    stop_all,
)
from observer.errors import CommandError, SettingsError, StartupFailed
from observer.instance import instance_of
from observer.prefect_api import check_prefect_api, refuse_another_hosts_pool, worker_name
from observer.prefect_database import check_prefect_database
from observer.settings import Settings
from observer.webhook.listen import bind_socket
from observer.worker.boot import worker_command

SERVER_START_TIMEOUT = 180.0


def run_everything(settings: Settings, *, prefect_port: int = 4200, server: bool = True) -> int:
    """Everything; with `server=False` all but the Prefect server, which runs at PREFECT_API_URL."""
    if server:
        api_url = f"http://127.0.0.1:{prefect_port}/api"
    elif settings.prefect_api_url:
        api_url = settings.prefect_api_url
    else:
        raise SettingsError(
            "--no-server needs PREFECT_API_URL, the API of the Prefect server to join"
            " (http://HOST:4200/api)"
        )
    env = prefect_environment(settings, api_url)
    instance = instance_of(settings)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    adopt_orphans()  # a flow run outlives its worker: it comes back here, to be waited for
    try:
        ports = ((prefect_port, "--prefect-port"),) if server else ()
        for port, variable in (*ports, (settings.port, "OBSERVER_PORT")):
            if port:
                bind_socket(
                    "127.0.0.1" if variable != "OBSERVER_PORT" else settings.host, port
                ).close()
        if server:
            database = check_prefect_database(env)
            say(
                f"starting the Prefect server on {api_url.removesuffix('/api')}"
                f" (database: {database}; home {env['PREFECT_HOME']})"
            )
            children.append(
                _start(
                    "prefect server",
                    env,
                    signal.SIGTERM,
                    settings.layout.logs_dir,
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
        else:
            say(f"joining the Prefect server at {api_url} ({check_prefect_api(api_url)})")
        refuse_another_hosts_pool(api_url, instance.work_pool, "OBSERVER_INSTANCE")
        say(
            f"applying prefect.yaml (work pool {instance.work_pool}, deployments, schedules, triggers)"
        )
        deploy(env)
        orphans = crash_orphaned_runs(api_url, instance.work_pool)
        if orphans:
            say(f"marked {orphans} run(s) left unfinished by the previous stop as Crashed")
        worker_args = ("--pool", instance.work_pool, "--name", worker_name())
        children.append(
            _child(
                "prefect worker",
                worker_command(*worker_args)
                if settings.worker == "warm"
                else [sys.executable, "-m", "prefect", "worker", "start", *worker_args],
                env,
                signal.SIGINT,
                settings.layout.logs_dir,
            )
        )
        children[-1].repeat_after = 3.0
        children.append(
            _child(
                "webhook",
                [sys.executable, "-m", "observer.cli", "webhook"],
                env,
                signal.SIGTERM,
                settings.layout.logs_dir,
            )
        )
        _wait_until_healthy(
            f"http://{settings.host}:{settings.port}/health", children[-1], "the webhook"
        )
        say(
            f"up: UI {api_url.removesuffix('/api')}  webhook http://{settings.host}:{settings.port}"
            f"  ops {settings.layout.ops_path.resolve()}  (Ctrl-C stops everything)"
        )
        say(f"logs in {settings.layout.logs_dir.resolve()}; a run that ends badly is one line here")
        return start_console(
            children,
            api_url,
            instance.work_pool,
            str(settings.layout.gateway_state.resolve()),
            lambda: stopping,
        )
    except CommandError as exc:
        print(f"observer: {exc}", file=sys.stderr)
        stop_all(children)
        return 1
    except BaseException:
        stop_all(children)
        raise


def _start(name: str, env: dict[str, str], stop_signal: int, logs: Path, *args: str) -> Child:
    return _child(name, [sys.executable, "-m", "prefect", *args], env, stop_signal, logs)


def _child(
    name: str, command: list[str], env: dict[str, str], stop_signal: int, logs: Path
) -> Child:
    """Start a part of the product; what it prints goes to its log file in `logs`, not the
    console."""
    log = logs / f"{name.replace(' ', '-')}.log"
    logs.mkdir(parents=True, exist_ok=True)
    if log.exists() and log.stat().st_size > LOG_BYTES:
        log.replace(old_copy(str(log)))
    with open(log, "ab") as output:
        # A process group of its own: a terminal's Ctrl-C reaches only the supervisor, which
        # then stops the children in order.
        process = subprocess.Popen(
            command, env=env, process_group=0, stdout=output, stderr=subprocess.STDOUT
        )
    return Child(name, process.pid, stop_signal, str(log), handle=process)


def _wait_until_healthy(
    url: str, child: Child, what: str, stopping: Callable[[], bool] = lambda: False
) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if not child.alive():
            raise StartupFailed(
                f"{what} exited during start-up; the end of its log ({child.log}):\n"
                + child.last_lines()
            )
        if stopping():
            raise StartupFailed("interrupted during start-up")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise StartupFailed(f"{what} did not answer within {SERVER_START_TIMEOUT:.0f} s")
