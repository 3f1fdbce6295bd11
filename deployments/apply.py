"""Applying `prefect.yaml`: the work pool, the deployments with their schedule lengths, and the
clean-up of runs a previous stop left behind. Used by `observer deploy` and `observer up`.

`prefect.yaml` stays the one description of the deployments; this module only fills in what
`prefect deploy` cannot template (interval lengths from OBSERVER_CYCLE) and runs it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from observer.catalog import FLOWS
from observer.errors import DeployFailed
from observer.instance import Instance, rename_deployments
from observer.settings import Settings

SCHEDULE_VARIABLES = (
    "OBSERVER_CYCLE_SECONDS",
    "OBSERVER_CONSOLIDATE_SECONDS",
    "OBSERVER_INGEST_SAFETY_SECONDS",
    "OBSERVER_HISTORY_SECONDS",
    "OBSERVER_OUTCOMES_RUN_SECONDS",
)
#: Retention of the Prefect database (`observer up`): runs, with their logs and artifacts, for
#: RUN_RETENTION_DAYS after they end; events for EVENT_RETENTION_DAYS, and the most numerous ones
#: (task-run states, rebuilt into task runs as they arrive, and heartbeats) for an hour. See
#: README, "The Prefect database".
RUN_RETENTION_DAYS = 14
EVENT_RETENTION_DAYS = 1
SHORT_LIVED_EVENTS = (
    "prefect.task-run.Pending",
    "prefect.task-run.Running",
    "prefect.task-run.Completed",
    "prefect.flow-run.heartbeat",
)


def project_dir() -> Path:
    """The checkout holding prefect.yaml: where flow runs import `flows` and `tasks` from."""
    configured = os.environ.get("OBSERVER_PROJECT_DIR")
    if configured:
        return Path(configured).resolve()
    for candidate in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (candidate / "prefect.yaml").exists():
            return candidate
    raise DeployFailed("cannot find prefect.yaml: run from the Observer checkout")


def prefect_environment(settings: Settings, api_url: str) -> dict[str, str]:
    """Environment for every Prefect process of the product (flow runs inherit the worker's)."""
    layout = settings.layout
    cycle = _seconds(settings.cycle_seconds)
    # The warm worker is woken by the server's events and by its own timers, so its regular poll
    # is only a safety net, every 30 s (21-39 s: Prefect adds 30% jitter), and looks far enough
    # ahead (50 s) to see every scheduled run before it is due and set its timer; a poll is a
    # query the server pays for, all day. Prefect's process worker has only its poll, so it polls
    # every second.
    query, prefetch = ("30", "50") if settings.worker == "warm" else ("1", "5")
    day = 24 * 3600
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(layout.prefect_home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # glibc gives each thread that allocates its own malloc arena (up to 8 a core), each
        # keeping what was freed in it; the server's threads (one per SQLite connection, a
        # thread pool) held about 10 MB more that way, measured at idle.
        "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
        "DO_NOT_TRACK": "1",
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", query),
        "PREFECT_WORKER_PREFETCH_SECONDS": os.environ.get(
            "PREFECT_WORKER_PREFETCH_SECONDS", prefetch
        ),
        # A bounded database: Prefect's db-vacuum service deletes ended runs (with their logs and
        # artifacts) and old events; its default keeps runs for ever and events for 7 days.
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": os.environ.get(
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", "events,flow_runs"
        ),
        "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": os.environ.get(
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD", str(RUN_RETENTION_DAYS * day)
        ),
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": os.environ.get(
            "PREFECT_SERVER_EVENTS_RETENTION_PERIOD", f"P{EVENT_RETENTION_DAYS}D"
        ),
        "PREFECT_SERVER_SERVICES_DB_VACUUM_EVENT_RETENTION_OVERRIDES": os.environ.get(
            "PREFECT_SERVER_SERVICES_DB_VACUUM_EVENT_RETENTION_OVERRIDES",
            json.dumps(dict.fromkeys(SHORT_LIVED_EVENTS, 3600)),
        ),
        "OBSERVER_WORKER": settings.worker,
        "OBSERVER_DATA_DIR": str(layout.data_dir.resolve()),
        "OBSERVER_PROJECT_DIR": str(project_dir()),
        "OBSERVER_INSTANCE": settings.instance or "",
        "OBSERVER_CYCLE_SECONDS": cycle,
        "OBSERVER_CONSOLIDATE_SECONDS": _seconds(settings.cycle_seconds * 5),
        # The webhook wakes ingestion itself (and again while records wait); this schedule only
        # covers records spooled while the webhook was down.
        "OBSERVER_INGEST_SAFETY_SECONDS": _seconds(max(300.0, settings.cycle_seconds)),
        "OBSERVER_HISTORY_SECONDS": _seconds(settings.history_compact_seconds),
        "OBSERVER_OUTCOMES_RUN_SECONDS": _seconds(settings.outcomes_seconds),
    }


def render_prefect_yaml(text: str, env: dict[str, str]) -> str:
    """prefect.yaml with the schedule lengths filled in, and the names of this instance (its
    work pool always: `observer`, or `observer-process` with OBSERVER_WORKER=process).

    `prefect deploy` validates schedules before it resolves `{{ $VAR }}` templates, so an interval
    taken from OBSERVER_CYCLE must be written in as a number first.
    """
    for name in SCHEDULE_VARIABLES:
        text = text.replace(f'"{{{{ ${name} }}}}"', env[name])
    instance = instance_from(env)
    if instance == Instance():
        return text
    return yaml.safe_dump(rename_deployments(yaml.safe_load(text), instance), sort_keys=False)


def instance_from(env: dict[str, str]) -> Instance:
    return Instance(env.get("OBSERVER_INSTANCE") or None, env.get("OBSERVER_WORKER") or "warm")


def catalog_mismatches(text: str) -> list[str]:
    """How prefect.yaml's deployments differ from the table of flows (`observer.catalog`): each
    flow deployed once, under its own name, from its own entrypoint, and nothing else."""
    declared = {d.get("name"): d.get("entrypoint") for d in yaml.safe_load(text)["deployments"]}
    problems = [
        f"deployment {name!r}: entrypoint {declared.get(name)!r}, expected {entry.entrypoint!r}"
        for name, entry in FLOWS.items()
        if declared.get(name) != entry.entrypoint
    ]
    problems += [
        f"deployment {name!r} is not in the table of flows"
        for name in declared.keys() - FLOWS.keys()
    ]
    return problems


def deploy(env: dict[str, str]) -> None:
    """Create the work pool and apply prefect.yaml (idempotent: safe on every start)."""
    project = Path(env["OBSERVER_PROJECT_DIR"])
    text = (project / "prefect.yaml").read_text()
    if problems := catalog_mismatches(text):
        raise DeployFailed("prefect.yaml does not match the flows: " + "; ".join(problems))
    rendered = Path(env["PREFECT_HOME"]) / "prefect.rendered.yaml"
    rendered.parent.mkdir(parents=True, exist_ok=True)
    rendered.write_text(render_prefect_yaml(text, env))
    instance = instance_from(env)
    pool = instance.work_pool
    _prefect(env, "work-pool", "create", pool, "--type", instance.work_pool_type, "--overwrite")
    _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", str(rendered), cwd=project)
    enforce_closed_parameters(env["PREFECT_API_URL"], instance_from(env))


def enforce_closed_parameters(api_url: str, instance: Instance) -> None:
    """Make the server refuse runs with unknown parameter names, at every door.

    Prefect's schema of a flow's signature leaves extra top-level names open (the parameters
    models inside it already forbid theirs); closing it and enforcing it makes the server answer
    409 to `{"dryrun": true}` as to `{"params": {"dryrun": true}}`, before any run exists.
    """
    for entry in FLOWS.values():
        path = instance.deployment_path(entry.name)
        deployment = _api("GET", f"{api_url}/deployments/name/{path}")
        if deployment.status_code != 200:
            raise DeployFailed(f"deployment {path} is missing after deploy")
        schema = {**deployment.json()["parameter_openapi_schema"], "additionalProperties": False}
        _api(
            "PATCH",
            f"{api_url}/deployments/{deployment.json()['id']}",
            json={"parameter_openapi_schema": schema, "enforce_parameter_schema": True},
        ).raise_for_status()


def crash_orphaned_runs(api_url: str, work_pool: str) -> int:
    """Mark runs a previous stop left pending or running as Crashed, before the worker starts.

    A worker stopped while it was starting a run leaves it `Pending` for ever; with concurrency 1
    it holds the deployment's slot, so every later run would be cancelled. No run of this work pool
    can really be in progress before its worker starts, so each one found is an orphan.
    """
    query = {
        "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}},
        "work_pools": {"name": {"any_": [work_pool]}},
        "limit": 200,
    }
    orphans = _api("POST", f"{api_url}/flow_runs/filter", json=query).json()
    state = {
        "type": "CRASHED",
        "name": "Crashed",
        "message": "Observer was stopped while this run was starting or running",
    }
    for run in orphans:
        _api(
            "POST",
            f"{api_url}/flow_runs/{run['id']}/set_state",
            json={"state": state, "force": True},
        ).raise_for_status()
    return len(orphans)


def _api(method: str, url: str, **kwargs: object) -> httpx.Response:
    """One API call, retried while the server answers 503 (its SQLite database is busy, as right
    after a start); Prefect's own client does the same."""
    for _ in range(20):
        response = httpx.request(method, url, timeout=30, **kwargs)  # type: ignore[arg-type]
        if response.status_code != 503:
            return response
        time.sleep(0.5)
    return response


def _prefect(env: dict[str, str], *args: str, cwd: Path | None = None) -> None:
    """Run a Prefect command quietly: its output (hints to start a worker in another terminal,
    which `observer up` already does) is shown only when it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise DeployFailed(
            f"`prefect {' '.join(args[:3])}` failed (exit {result.returncode}):\n{tail}"
        )


def _seconds(value: float) -> str:
    """A schedule length for prefect.yaml. Above a minute it is rounded up to whole minutes: the
    UI's deployment list shows "Every 3 minutes" but has no room for "Every 2 minutes 30 seconds"
    (it showed a bare "+1" for consolidate-playbooks' 5 × 30 s)."""
    if value > 60 and value % 60:
        value = math.ceil(value / 60) * 60
    return str(int(value)) if float(value).is_integer() else str(value)
