"""The database check `observer up` makes before it starts a Prefect server on PostgreSQL: against
a real PostgreSQL server, each usual mistake is one line naming the variable, within seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from observer.prefect_database import URL_VARIABLE, DatabaseUnusable, check_prefect_database
from observer.settings import SettingsError
from tests.postgres import Database, PostgresServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> Database:
    return postgres.create_database("checked", "checker")


def check(url: str, **env: str) -> str:
    return check_prefect_database(
        {"PREFECT_HOME": "/nonexistent/home", URL_VARIABLE: url, **env}, timeout=2
    )


def test_without_a_url_the_database_is_sqlite_under_prefect_home() -> None:
    described = check_prefect_database({"PREFECT_HOME": "/srv/data/_prefect"})
    assert described == "SQLite at /srv/data/_prefect/prefect.db"


def test_a_usable_database_is_described_without_its_password(database: Database) -> None:
    described = check(database.prefect_url)
    assert (
        described.startswith("PostgreSQL ") and f":{database.port}/checked as checker" in described
    )
    assert database.password not in described


def test_the_password_may_come_from_prefects_password_variable(database: Database) -> None:
    url = database.prefect_url.replace(database.password, "${PREFECT_SERVER_DATABASE_PASSWORD}")
    assert "as checker" in check(url, PREFECT_SERVER_DATABASE_PASSWORD=database.password)


def test_the_url_may_come_from_prefect_toml_as_prefect_reads_it(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prefect.toml").write_text(
        f'[server.database]\nconnection_url = "{database.prefect_url}"\n'
    )
    assert "as checker" in check_prefect_database({"PREFECT_HOME": str(tmp_path)})
    (tmp_path / "prefect.toml").write_text('[server.database]\nconnection_url = "mysql://x/y"\n')
    with pytest.raises(SettingsError, match=r"prefect.toml \[server.database\] connection_url"):
        check_prefect_database({"PREFECT_HOME": str(tmp_path)})


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgres://u:p@localhost/prefect", "postgresql+asyncpg://"),
        ("postgresql+psycopg2://u:p@localhost/prefect", "asyncpg driver"),
        ("mysql+aiomysql://u:p@localhost/prefect", "supports postgresql+asyncpg://"),
        ("localhost:5432", "not a database URL"),
    ],
)
def test_a_url_prefect_cannot_use_is_a_settings_error(url: str, words: str) -> None:
    with pytest.raises(SettingsError, match=URL_VARIABLE) as error:
        check(url)
    assert words in str(error.value)


def test_each_usual_connection_mistake_is_one_plain_line(database: Database) -> None:
    mistakes = {
        database.prefect_url.replace(database.password, "wrong"): "password authentication failed"
        " for user checker",
        database.prefect_url.replace("/checked", "/missing"): "database missing does not exist",
        database.prefect_url.replace(f":{database.port}/", f":{_closed_port()}/"): "nothing accepts"
        " connections",
        "postgresql+asyncpg://u:p@no-such-host.invalid/prefect": "unknown host no-such-host.invalid",
    }
    for url, words in mistakes.items():
        with pytest.raises(DatabaseUnusable) as error:
            check(url)
        message = str(error.value)
        assert message.startswith(f"{URL_VARIABLE}: PostgreSQL at ") and words in message, message
        assert "\n" not in message and "wrong" not in message


def test_a_server_that_never_answers_is_a_timeout_not_a_hang() -> None:
    with _silent_listener() as port:
        started = time.monotonic()
        with pytest.raises(DatabaseUnusable, match="no answer within"):
            check(f"postgresql+asyncpg://u:p@127.0.0.1:{port}/prefect")
        assert time.monotonic() - started < 10


def test_a_role_that_cannot_create_pg_trgm_is_told_what_to_run(postgres: PostgresServer) -> None:
    guest = postgres.create_database("notmine", "guest", owner=False)
    with pytest.raises(DatabaseUnusable) as error:
        check(guest.prefect_url)
    assert "may not create the pg_trgm extension" in str(error.value)
    assert "CREATE EXTENSION pg_trgm;" in str(error.value)
    # With the extension created by a superuser, what is missing next is the right to create tables.
    postgres.execute("CREATE EXTENSION pg_trgm", database="notmine")
    postgres.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC", database="notmine")  # < 15
    with pytest.raises(DatabaseUnusable, match="may not create tables in schema public"):
        check(guest.prefect_url)


def test_observer_up_with_an_unreachable_database_exits_at_once(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OBSERVER_DATA_DIR": str(tmp_path / "data"),
        "OBSERVER_PORT": "0",
        URL_VARIABLE: f"postgresql+asyncpg://observer:secret@127.0.0.1:{_closed_port()}/prefect",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "observer.cli", "up", "--prefect-port", str(_closed_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert time.monotonic() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and URL_VARIABLE in lines[0] and "nothing accepts" in lines[0]
    assert "secret" not in result.stderr + result.stdout
    assert not (tmp_path / "data" / "_prefect" / "prefect.db").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _silent_listener() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]
