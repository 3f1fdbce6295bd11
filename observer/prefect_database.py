"""Which database `observer up`'s Prefect server will use, checked before the server starts.

Prefect's own setting decides: `PREFECT_SERVER_DATABASE_CONNECTION_URL` (`postgresql+asyncpg://…`)
or, unset, SQLite under PREFECT_HOME. Prefect's server given a wrong URL or an unreachable database
retries, then dies with a long traceback; a short connection attempt here turns the usual mistakes
(bad URL, nothing listening, wrong password, missing database, no right to create `pg_trgm`) into one
line that names the variable, within a few seconds.
"""

from __future__ import annotations

import asyncio
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from observer.errors import DatabaseUnusable, SettingsError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

URL_VARIABLE = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
# Prefect still reads its older name; the newer one wins when both are set.
URL_VARIABLES = (URL_VARIABLE, "PREFECT_API_DATABASE_CONNECTION_URL")
PASSWORD_VARIABLES = ("PREFECT_SERVER_DATABASE_PASSWORD", "PREFECT_API_DATABASE_PASSWORD")
EXAMPLE = "postgresql+asyncpg://USER:PASSWORD@HOST:5432/DATABASE"
CONNECT_TIMEOUT = 5.0
DIALECT_ONLY_QUERY = frozenset(
    {
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
        "default_transaction_isolation",
    }
)


def check_prefect_database(env: Mapping[str, str], timeout: float = CONNECT_TIMEOUT) -> str:
    """Describe the database the Prefect server will use, after checking that it can.

    Raises SettingsError for a URL Prefect cannot use and DatabaseUnusable for a database that
    does not accept it.
    """
    variable, raw = configured_database_url(env)
    if raw is None:
        return f"SQLite at {Path(env['PREFECT_HOME']) / 'prefect.db'}"
    url = _parse(variable, _fill_password(raw, env))
    if url.drivername == "sqlite+aiosqlite":
        return f"SQLite at {url.database}"
    where = f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or url.username}"
    try:
        return asyncio.run(asyncio.wait_for(_inspect(url, timeout), timeout + 1))
    except DatabaseUnusable as exc:
        raise DatabaseUnusable(f"{variable}: PostgreSQL at {where}: {exc}") from None
    except Exception as exc:
        raise DatabaseUnusable(
            f"{variable}: PostgreSQL at {where}: {_plain(exc, url, timeout)}"
        ) from None


def configured_database_url(env: Mapping[str, str]) -> tuple[str, str | None]:
    """Where the URL comes from and the URL: the environment first, then `[server.database]
    connection_url` of ./prefect.toml, as Prefect's server (started in this directory) reads them."""
    for name in URL_VARIABLES:
        if env.get(name):
            return name, env[name]
    try:
        toml = tomllib.loads(Path("prefect.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return URL_VARIABLE, None
    url = toml.get("server", {}).get("database", {}).get("connection_url")
    return (
        ("prefect.toml [server.database] connection_url", url)
        if isinstance(url, str)
        else (URL_VARIABLE, None)
    )


def _fill_password(raw: str, env: Mapping[str, str]) -> str:
    """Prefect's `${PREFECT_SERVER_DATABASE_PASSWORD}` placeholder, so the URL can omit the secret."""
    password = next((env[name] for name in PASSWORD_VARIABLES if env.get(name)), "")
    for name in PASSWORD_VARIABLES:
        raw = raw.replace(f"${{{name}}}", password)
    return raw


def _parse(variable: str, raw: str) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise SettingsError(f"{variable} is not a database URL; expected {EXAMPLE}") from None
    if url.drivername in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        return url
    if url.get_backend_name() in ("postgresql", "postgres"):
        raise SettingsError(
            f"{variable} must name the asyncpg driver: postgresql+asyncpg://… (got {url.drivername}://…)"
        )
    raise SettingsError(
        f"{variable}: Prefect supports postgresql+asyncpg:// and sqlite+aiosqlite://, not {url.drivername}://"
    )


async def _inspect(url: URL, timeout: float) -> str:
    import asyncpg

    # What SQLAlchemy's asyncpg dialect hands to asyncpg.connect: the URL's parts and its query.
    arguments: dict[str, object] = url.translate_connect_args(username="user")
    arguments.update((k, v) for k, v in url.query.items() if k not in DIALECT_ONLY_QUERY)
    connection = await asyncpg.connect(**arguments, timeout=timeout)
    try:
        row = await connection.fetchrow(
            """
            select current_setting('server_version') as version,
                   current_setting('server_version_num')::int as version_num,
                   current_user as who, current_database() as db, current_schema() as schema,
                   exists(select 1 from pg_extension where extname = 'pg_trgm') as has_trgm,
                   exists(select 1 from pg_available_extensions where name = 'pg_trgm') as can_trgm,
                   has_database_privilege(current_database(), 'CREATE') as create_in_db,
                   coalesce(has_schema_privilege(current_schema(), 'CREATE'), false) as create_here,
                   (select rolsuper from pg_roles where rolname = current_user) as superuser,
                   to_regclass('alembic_version') is not null as migrated
            """
        )
    finally:
        await connection.close()
    assert row is not None
    _require_rights(dict(row))
    return f"PostgreSQL {row['version'].split()[0]} at {url.host}:{url.port or 5432}/{row['db']} as {row['who']}"


def _require_rights(row: dict[str, object]) -> None:
    """Prefect's first migration creates `pg_trgm` and every table; say what is missing for that."""
    who, db = row["who"], row["db"]
    if not row["has_trgm"]:
        if not row["can_trgm"]:
            raise DatabaseUnusable(
                "the pg_trgm extension Prefect needs is not installed on the server"
                " (Debian/Ubuntu: the postgresql-contrib package)"
            )
        # pg_trgm is a trusted extension from PostgreSQL 13: CREATE on the database is enough.
        trusted = int(str(row["version_num"])) >= 130000 and row["create_in_db"]
        if not (row["superuser"] or trusted):
            raise DatabaseUnusable(
                f"user {who} may not create the pg_trgm extension Prefect needs; run"
                f" `CREATE EXTENSION pg_trgm;` in database {db} as a superuser once"
            )
    if not row["migrated"] and not (row["superuser"] or row["create_here"]):
        raise DatabaseUnusable(
            f"user {who} may not create tables in schema {row['schema']} of database {db}"
            f" (Prefect's migrations do); make {who} the database's owner or"
            f" `GRANT CREATE ON SCHEMA {row['schema']} TO {who}`"
        )


def _plain(exc: BaseException, url: URL, timeout: float) -> str:
    """The usual connection failures in plain words; anything else as its own one-line message."""
    import asyncpg

    host, port = url.host or "localhost", url.port or 5432
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"password authentication failed for user {url.username}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"database {url.database} does not exist (create it: createdb -O {url.username} {url.database})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s from {host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"unknown host {host}"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing accepts connections on {host}:{port} (is PostgreSQL running there?)"
    if isinstance(exc, OSError):
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.replace(url.password, "***") if url.password else text
