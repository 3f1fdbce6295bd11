"""Shared fixtures: isolated settings and data dir, the Prefect test server, fake upstreams and
the webhook as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports prefect: no telemetry, a private PREFECT_HOME, never a surprise server.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="observer-prefect-home-")
os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ["PREFECT_API_URL"] = ""  # not the checkout's prefect.toml: tests name their server

from observer.settings import Settings, load_settings
from tests.fakes import FakeUpstream, WebhookProcess, stop_worker, wait_until_online
from tests.postgres import PostgresServer, PostgresUnavailable
from tests.s3 import S3Server

ROOT = Path(__file__).resolve().parent.parent

OBSERVER_VARIABLES = (
    "GATEWAY_URL",
    "LAKEHOUSE_URL",
    "OBSERVER_CYCLE",
    "OBSERVER_PORT",
    "OVERSEER_CORRECTIONS_PATH",
    "OBSERVER_HOST",
    "OBSERVER_TOKEN",
    "OBSERVER_MAX_BODY_BYTES",
    "OBSERVER_DATA_DIR",
    "OBSERVER_HISTORY",
    "OBSERVER_HISTORY_URI",
    "OBSERVER_HOT_MAX_BYTES",
    "OBSERVER_HISTORY_DAYS",
    "OBSERVER_HISTORY_UPKEEP",
)


#: `make test` runs the suite on two processes (pytest-xdist, `--dist loadgroup`). The tests of the
#: session's Prefect server share one process, where it starts once; the tests that start a whole
#: product of their own share the other; the rest go wherever a process is free.
SESSION_SERVER_FIXTURES = frozenset({"prefect_server", "deployed_api", "worker"})
OWN_PRODUCT_MODULES = frozenset({"test_up", "test_postgres", "test_browser"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SESSION_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("session-server"))
        elif item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in (
            OWN_PRODUCT_MODULES
        ):
            item.add_marker(pytest.mark.xdist_group("own-products"))


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real Prefect API server (temporary SQLite) for the whole session; sync flows without the
    heartbeat thread's one-second wait at exit."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=90),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own on 127.0.0.1; skipped only where none is installed."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """An S3 server on 127.0.0.1 (moto) for the history table on object storage."""
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def observer_env(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of an isolated Observer: its own data dir, upstreams nowhere until told."""
    for name in OBSERVER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = {
        "OBSERVER_DATA_DIR": str(data_dir),
        "OVERSEER_CORRECTIONS_PATH": str(tmp_path / "kb" / "overseer_corrections.jsonl"),
        "GATEWAY_URL": "http://127.0.0.1:9",
        "LAKEHOUSE_URL": "http://127.0.0.1:9",
        "OBSERVER_HTTP_TIMEOUT": "2",
        "OBSERVER_HTTP_BACKOFF": "0.01",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def settings(observer_env: dict[str, str]) -> Settings:
    return load_settings()


def _upstream(
    variable: str, observer_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeUpstream]:
    """A fake upstream on loopback, named by `variable` in the environment and `observer_env`."""
    fake = FakeUpstream()
    monkeypatch.setenv(variable, fake.url)
    observer_env[variable] = fake.url
    yield fake
    fake.close()


@pytest.fixture
def gateway(
    observer_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeUpstream]:
    yield from _upstream("GATEWAY_URL", observer_env, monkeypatch)


@pytest.fixture
def llm(observer_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    yield from _upstream("LAKEHOUSE_URL", observer_env, monkeypatch)


@pytest.fixture
def webhook(observer_env: dict[str, str], tmp_path: Path) -> Iterator[WebhookProcess]:
    process = WebhookProcess(observer_env, cwd=tmp_path)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def deployed_api(prefect_server: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's Prefect server with Observer's work pool and four deployments applied by the
    real `observer deploy`; returns its API URL."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    data_dir = tmp_path_factory.mktemp("deploy") / "data"
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "OBSERVER_DATA_DIR": str(data_dir),
        "OBSERVER_PROJECT_DIR": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-m", "observer.cli", "deploy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return api_url


@pytest.fixture(scope="session")
def worker_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker") / "data"


@pytest.fixture(scope="session")
def worker(deployed_api: str, worker_data: Path) -> Iterator[dict[str, str]]:
    """A real worker of Observer's pool (type observer-warm), started the way `observer up` starts
    it; yields the environment its runs see. Its output goes to `worker.log` beside the data."""
    from deployments.apply import prefect_environment
    from observer.instance import WORK_POOL
    from observer.worker.boot import worker_command

    env = prefect_environment(load_settings(data_dir=worker_data), deployed_api)
    env.update(
        {
            # A scheduled run made due in the past is found at the worker's next poll (30 s in
            # the product, where timers and events start runs): the tests' worker polls oftener.
            "PREFECT_WORKER_QUERY_SECONDS": "5",
            "GATEWAY_URL": "http://127.0.0.1:9",
            "LAKEHOUSE_URL": "http://127.0.0.1:9",
            "OBSERVER_HTTP_TIMEOUT": "1",
            "OBSERVER_HTTP_ATTEMPTS": "1",
        }
    )
    Path(env["PREFECT_HOME"]).mkdir(parents=True)
    with open(worker_data.parent / "worker.log", "wb") as log:
        process = subprocess.Popen(
            worker_command("--pool", WORK_POOL, "--name", "test-worker"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    try:
        wait_until_online(deployed_api, WORK_POOL, "test-worker")
        yield env
    finally:
        stop_worker(process)
