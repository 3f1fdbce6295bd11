"""`observer up --no-server`: the Prefect server another host runs, checked before joining it.

A host that joins a shared server runs its own worker on its own work pool (observer/instance.py).
Two hosts on the same pool would take each other's runs and run them against their own data
directory, so a pool that already has another host's worker online is refused, with the fix.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import httpx

from observer.errors import PrefectApiUnusable

API_VARIABLE = "PREFECT_API_URL"
TIMEOUT = 5.0


def worker_name() -> str:
    """This host's worker: the name the pool check below recognises as ours after a restart."""
    return f"observer-worker@{socket.gethostname()}"


def check_prefect_api(api_url: str) -> str:
    """The server's version (`GET …/admin/version`, a JSON string); else why it cannot be used."""
    path = f"{api_url.rstrip('/')}/admin/version"
    try:
        answer = httpx.get(path, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise PrefectApiUnusable(
            f"{API_VARIABLE}={api_url} does not answer ({type(exc).__name__}: {exc});"
            " start the Prefect server there first"
        ) from None
    try:
        version = answer.json() if answer.status_code == 200 else None
    except ValueError:
        version = None
    if not isinstance(version, str):
        raise PrefectApiUnusable(
            f"{API_VARIABLE}={api_url} is not a Prefect API (GET {path} answered"
            f" {answer.status_code} {answer.text[:60]!r}); it ends in /api, e.g. http://HOST:4200/api"
        )
    return f"Prefect {version}"


def refuse_another_hosts_pool(api_url: str, work_pool: str, instance_variable: str) -> None:
    """Stop if a worker of another host is online on `work_pool` (a missing pool is fine)."""
    answer = httpx.post(
        f"{api_url.rstrip('/')}/work_pools/{work_pool}/workers/filter",
        json={"limit": 100},
        timeout=TIMEOUT,
    )
    if answer.status_code == 404:
        return
    answer.raise_for_status()
    ours = worker_name()
    others = [w for w in answer.json() if w["status"] == "ONLINE" and w["name"] != ours]
    if others:
        seen = datetime.fromisoformat(others[0]["last_heartbeat_time"])
        ago = (datetime.now(UTC) - seen).total_seconds()
        raise PrefectApiUnusable(
            f"work pool {work_pool} already has a worker of another host online"
            f" ({others[0]['name']}, last seen {ago:.0f} s ago): its runs would run here against"
            f" this host's data. Give each host its own {instance_variable} (e.g. its host name)"
        )
