"""`observer run FLOW -p key=value`: one run of a deployment now, followed until it ends.

The run is made on the Prefect server like any manual run (the UI's "Run", `prefect deployment
run`): it waits for a run already going, appears in the deployment's history with its parameters,
logs and artifacts, and is executed by the worker. Parameters are checked here first, so a
misspelt name is refused before anything starts. No server answering is an error, never a silent
throw-away one; `--ephemeral` asks for exactly that (the flow runs in this process, on a temporary
server, and its result is printed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

from observer import markdown
from observer.catalog import FLOWS, FlowEntry
from observer.errors import CommandError
from observer.instance import instance_of
from observer.pipelines.parameters import FlowParameters
from observer.settings import Settings

POLL_SECONDS = 0.5
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

#: How long `--ephemeral` waits for its temporary Prefect server by default: Prefect's own 20 s
#: were not enough on a busy 2-core machine, where the server's imports alone can take longer.
EPHEMERAL_STARTUP_SECONDS = 120


def parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs; a value is JSON when it parses as JSON, else a plain string."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"parameter {assignment!r} is not KEY=VALUE")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def run_flow_command(
    settings: Settings,
    name: str | None,
    assignments: Sequence[str],
    *,
    list_only: bool = False,
    ephemeral: bool = False,
    startup_seconds: int = EPHEMERAL_STARTUP_SECONDS,
) -> int:
    if list_only or not name:
        for flow_name in FLOWS:
            print(flow_name)
        return 0 if list_only else 2
    entry = FLOWS.get(name)
    if entry is None:
        print(f"observer: no flow named {name!r}; one of: {', '.join(FLOWS)}", file=sys.stderr)
        return 2
    try:
        params = entry.parameters_model().from_values(parse_assignments(assignments))
    except ValueError as exc:
        print(f"observer: bad parameters for {name}: {exc}", file=sys.stderr)
        return 2
    if ephemeral:
        return _run_here(entry, params, startup_seconds)
    api = _answering_api(settings)
    return _run_deployment(entry, params, api, instance_of(settings).deployment_path(entry.name))


def _answering_api(settings: Settings) -> str:
    """The Prefect API to use, once it answers; a `CommandError` saying what to do otherwise."""
    api = settings.prefect_api_url
    if not api:
        raise CommandError(
            "no Prefect server is configured: start the product (`make up`), set"
            " PREFECT_API_URL, or run with --ephemeral on a temporary server"
        )
    try:
        httpx.get(f"{api.rstrip('/')}/health", timeout=3).raise_for_status()
    except httpx.HTTPError as exc:
        raise CommandError(
            f"no Prefect server answers at {api} ({type(exc).__name__}): start the product"
            " (`make up`), or run with --ephemeral on a temporary server"
        ) from None
    return api.rstrip("/")


def _run_deployment(entry: FlowEntry, params: FlowParameters, api: str, deployment: str) -> int:
    """`deployment` is this host's (`flow/flow`, or `flow/flow-NAME` with OBSERVER_INSTANCE)."""
    os.environ["PREFECT_API_URL"] = api  # before prefect is imported: its client reads it
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        run = run_deployment(
            deployment,
            parameters={"params": params.model_dump(mode="json")},
            flow_run_name=params.run_name(entry.name),
            timeout=0,
        )
    except ObjectNotFound:
        raise CommandError(
            f"the server at {api} has no deployment {deployment!r}: run `observer deploy`"
        ) from None
    except PrefectHTTPStatusError as exc:
        detail = exc.response.json().get("detail", exc.response.text)
        raise CommandError(f"the server refused the run: {detail}") from None
    url = f"{api.removesuffix('/api')}/runs/flow-run/{run.id}"
    _say(f"{entry.name}: run {run.name!r} created: {url}")
    seen = ""
    with get_client(sync_client=True) as client:
        try:
            while True:
                run = client.read_flow_run(run.id)
                state = run.state
                if state is not None and state.name != seen:
                    seen = state.name
                    _say(
                        f"{entry.name}: {state.name}"
                        + (f": {state.message}" if state.message else "")
                    )
                if state is not None and state.type.value in FINAL_STATES:
                    break
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            _say(f"stopped following; the run goes on: {url}")
            return 130
        for artifact in _artifacts(client, run.id):
            _say(f"  artifact {artifact.key}: {markdown.plain(artifact.description or '')}")
    return 0 if state.is_completed() else 1


def _artifacts(client: Any, flow_run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flow_run_filter = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    return [a for a in client.read_artifacts(artifact_filter=flow_run_filter) if a.key]


def _run_here(entry: FlowEntry, params: FlowParameters, startup_seconds: int) -> int:
    """The flow in this process, on a temporary Prefect server (asked for with --ephemeral).

    The server is Prefect's own temporary one (`SubprocessASGIServer`, what ephemeral mode
    starts), started here with the allowance asked for, and named to every client of this
    process as its API: the flow's client and Prefect's events worker, which in ephemeral mode
    got no URL and logged an error for each event. A throw-away server sends no telemetry.
    """
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"  # nothing else starts one
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from pydantic import BaseModel

    server = SubprocessASGIServer()
    try:
        server.start(timeout=startup_seconds)
    except RuntimeError:
        server.stop()
        raise CommandError(
            f"the temporary Prefect server did not answer within {startup_seconds} s"
            " (--startup-seconds)"
        ) from None
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            state = entry.load()(params, return_state=True)
            result = state.result(raise_on_failure=False)
            _drain_to(server)
    finally:
        server.stop()
    if isinstance(result, BaseModel):
        print(result.model_dump_json(indent=2))
    elif result is not None and not isinstance(result, Exception):
        print(result)
    _say(f"{entry.name}: {state.name}" + (f": {state.message}" if state.message else ""))
    return 0 if state.is_completed() else 1


def _drain_to(server: Any) -> None:
    """Send the run's queued logs and events while the server is still there (as Prefect's own
    test harness does before it stops its server): each would be an error line after."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    EventsWorker.drain_all()


def _say(message: str) -> None:
    print(f"observer: {message}", file=sys.stderr, flush=True)
