"""A throw-away PostgreSQL server for tests: Debian's server binaries, a new cluster in a temporary
directory, listening on 127.0.0.1 and a free port, stopped and removed afterwards.

`initdb` refuses to run as root, so as root the cluster belongs to the `postgres` system user that
Debian's package creates, and every server command runs through `runuser`. The test database is
owned by an ordinary (non-superuser) role with a password, as an operator would hand to Prefect: it
proves that Prefect's migrations need no more than owning the database (pg_trgm is a trusted
extension since PostgreSQL 13).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

SUPERUSER = "postgres"
DEBIAN_BINARIES = Path("/usr/lib/postgresql")


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's server binaries are not installed (the reason a test skips)."""


def server_binaries() -> Path:
    """The directory holding `initdb` and `pg_ctl`: on the PATH, else Debian's newest version."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(
        (p for p in DEBIAN_BINARIES.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise PostgresUnavailable(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed; `make test` installs"
            " them with apt-get when it runs as root on Debian or Ubuntu"
        )
    return versions[-1]


@dataclass(frozen=True)
class Database:
    """One database on the throw-away server, and the role that owns it."""

    host: str
    port: int
    name: str
    user: str
    password: str

    @property
    def prefect_url(self) -> str:
        """The value for PREFECT_SERVER_DATABASE_CONNECTION_URL."""
        return (
            f"postgresql+asyncpg://{self.user}:{self.password}@{self.host}:{self.port}/{self.name}"
        )

    def query(self, sql: str, *args: object) -> list[dict[str, Any]]:
        """Rows of one query, as the owning role."""

        async def fetch() -> list[dict[str, Any]]:
            connection = await asyncpg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                database=self.name,
                timeout=10,
            )
            try:
                return [dict(row) for row in await connection.fetch(sql, *args)]
            finally:
                await connection.close()

        return asyncio.run(fetch())


class PostgresServer:
    """A cluster of our own, started with `pg_ctl` on 127.0.0.1; `stop()` removes it."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        self.owner = _unprivileged_owner()
        self.dir = Path(tempfile.mkdtemp(prefix="observer-pg-"))
        self.data = self.dir / "cluster"
        self.port = _free_port()
        self.superuser_password = secrets.token_hex(12)

    def start(self) -> PostgresServer:
        password_file = self.dir / "pw"
        password_file.write_text(self.superuser_password)
        if self.owner is not None:
            shutil.chown(self.dir, user=self.owner.pw_uid, group=self.owner.pw_gid)
            shutil.chown(password_file, user=self.owner.pw_uid, group=self.owner.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--pwfile",
            str(password_file),
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-instructions",
        )
        password_file.unlink()
        # No fsync: the cluster is thrown away, and the test measures nothing.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c full_page_writes=off"
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.dir / "server.log"),
            "--options",
            options,
            "--wait",
            "--timeout",
            "60",
            "start",
        )
        return self

    def create_database(self, name: str, user: str, *, owner: bool = True) -> Database:
        """A database and a new login role that is not a superuser; the role owns the database
        unless `owner=False` (then it may connect, nothing more)."""
        password = secrets.token_hex(12)
        self.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        self.execute(f"CREATE DATABASE {name} OWNER {user if owner else SUPERUSER}")
        return Database("127.0.0.1", self.port, name, user, password)

    def execute(self, sql: str, database: str = "postgres") -> None:
        """One statement as the superuser."""

        async def run() -> None:
            connection = await asyncpg.connect(
                host="127.0.0.1",
                port=self.port,
                user=SUPERUSER,
                password=self.superuser_password,
                database=database,
                timeout=10,
            )
            try:
                await connection.execute(sql)
            finally:
                await connection.close()

        asyncio.run(run())

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the server if it runs (also after a failed start) and remove the cluster."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "--pgdata", str(self.data), "--mode", "fast", "--wait", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        command = [str(self.bin / program), *args]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner.pw_name, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=120, cwd=self.dir, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{self.log()}"
            )


def _unprivileged_owner() -> pwd.struct_passwd | None:
    """None when we are not root; as root, the `postgres` system user (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresUnavailable(
            "running as root and there is no `postgres` system user to own the test cluster"
            " (Debian's postgresql package creates it)"
        ) from exc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
